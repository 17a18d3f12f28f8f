"""Broker and database instances of a chaos run's own, which it may stop and restart.

The shared services on the machine are never touched: a scenario that breaks a service
starts its own on a free loopback port, in a temporary folder, and removes it afterwards.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path

import psycopg
import redis


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(check: Callable[[], object], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(Exception):  # the service is still starting
            if check():
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {timeout_s:g}s")


class RedisInstance:
    """redis-server with append-only persistence (fsync always), so a restart keeps data."""

    def __init__(self, directory: Path, *, addresses: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.directory = directory
        self.addresses = addresses
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", *self.addresses),
                *("--protected-mode", "no" if len(self.addresses) > 1 else "yes"),
                *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
                *("--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_until(client.ping, timeout_s=30, what="redis")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(30)


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None
    )
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return found


class PostgresInstance:
    """A PostgreSQL cluster of the run's own (initdb, pg_ctl), trust auth on loopback.

    ``settings`` are passed as ``-c name=value`` on the postmaster's command line, so
    they are not in the data folder's configuration files: a base backup of this cluster
    does not inherit them.
    """

    def __init__(
        self,
        directory: Path,
        *,
        addresses: tuple[str, ...] = ("127.0.0.1",),
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.addresses = addresses
        self.settings = dict(settings or {})
        self.data = directory / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        subprocess.run(
            as_postgres([pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"]),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with (self.data / "pg_hba.conf").open("a") as hba:  # clients on those addresses' nets
            for address in self.addresses[1:]:
                hba.write(f"host all all {address}/24 trust\n")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses={','.join(self.addresses)} "
            f"-c unix_socket_directories={self.directory}"
        )
        # pg_ctl hands the options to a shell: quote each, a value may hold spaces.
        for name, value in self.settings.items():
            options += f" -c {shlex.quote(f'{name}={value}')}"
        subprocess.run(
            as_postgres(
                [
                    pg_bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-o",
                    options,
                    "-l",
                    str(self.directory / "log"),
                    "-w",
                    "start",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wait_until(self._accepts, timeout_s=30, what="postgres")

    def _accepts(self) -> bool:
        with psycopg.connect(self.url) as connection:
            return connection.execute("SELECT 1").fetchone() is not None

    def stop(self) -> None:
        subprocess.run(
            as_postgres([pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def postmaster_pid(self) -> int | None:
        """The running postmaster's process id (from ``postmaster.pid``), or None."""
        with suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            if _alive(pid):
                return pid
        return None

    def processes(self) -> list[int]:
        """The cluster's running processes: the postmaster and every child, found by their
        working folder (the postmaster moves to the data folder, its children inherit it;
        each child is in a process group of its own, so the group would not do)."""
        found = []
        data = str(self.data.resolve())
        for entry in Path("/proc").glob("[0-9]*"):
            with suppress(OSError, ValueError):
                if os.readlink(entry / "cwd") == data and _alive(int(entry.name)):
                    found.append(int(entry.name))
        return found

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once, as a crashed host would: no
        shutdown checkpoint, and no backend left to tell its client the server went away
        (had the postmaster died alone, each would, within milliseconds, with a FATAL
        "unexpected postmaster exit"). A later :meth:`start` recovers from the WAL."""
        pid = self.postmaster_pid()
        if pid is not None:  # stopped, it forks no more backends and is not yet dead to them
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        # A backend notices its postmaster's death within milliseconds, sooner than a look
        # through /proc: the cluster is listed first, then killed all at once.
        for victim in self.processes():
            with suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)

        def gone() -> bool:
            for child in self.processes():  # any the first pass missed
                with suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            return not self.processes()

        wait_until(gone, timeout_s=30, what=f"postgres in {self.data} to die")


RABBIT_BIN = "/usr/lib/rabbitmq/bin"


class RabbitInstance:
    """A RabbitMQ node of the run's own (its own node name, ports and data folder)."""

    def __init__(
        self,
        directory: Path,
        *,
        addresses: tuple[str, ...] = ("127.0.0.1",),
        cookie: str | None = None,
    ) -> None:
        self.directory = directory
        self.addresses = addresses
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"chaos{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.cookie = cookie
        """The Erlang cookie of the node and its CLI (nodes of one cluster share one); None:
        the machine's, in the rabbitmq user's home."""
        self.home = directory / "home" if cookie is not None else Path("/var/lib/rabbitmq")

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            **(
                {"RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1"}
                if len(self.addresses) == 1
                else {}  # listeners in rabbitmq.conf
            ),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_PID_FILE": str(self.directory / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq"),
        }

    def _run(self, *command: str, check: bool = True) -> bool:
        """Run a RabbitMQ command as the rabbitmq user (as Debian's wrappers would)."""
        env = {**self._env(), "HOME": str(self.home)}
        prefix = ["runuser", "-u", "rabbitmq", "--"] if os.geteuid() == 0 else []
        variables = [f"{k}={v}" for k, v in env.items() if k.startswith(("RABBITMQ_", "HOME"))]
        done = subprocess.run(
            [*prefix, "env", *variables, *command],
            check=check,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.home if os.geteuid() == 0 else None,
        )
        return done.returncode == 0

    def ctl(self, *arguments: str, tool: str = "rabbitmqctl", timeout_s: float = 60) -> str:
        """``TOOL -n NODE ARGUMENTS`` (a RabbitMQ CLI) as the rabbitmq user; its output.

        Raises :class:`subprocess.CalledProcessError` when the command fails.
        """
        prefix = ["runuser", "-u", "rabbitmq", "--"] if os.geteuid() == 0 else []
        variables = [
            f"{k}={v}"
            for k, v in {**self._env(), "HOME": str(self.home)}.items()
            if k.startswith(("RABBITMQ_", "HOME"))
        ]
        done = subprocess.run(
            [*prefix, "env", *variables, f"{RABBIT_BIN}/{tool}", "-n", self.node, *arguments],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=self.home if os.geteuid() == 0 else None,
        )
        return done.stdout

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "log").mkdir(exist_ok=True)
        (self.directory / "enabled_plugins").write_text("[].\n")
        listeners = "".join(
            f"listeners.tcp.{i} = {address}:{self.port}\n"
            for i, address in enumerate(self.addresses, start=1)
            if len(self.addresses) > 1
        )
        (self.directory / "rabbitmq.conf").write_text(f"loopback_users = none\n{listeners}")
        if self.cookie is not None:  # Erlang reads the cookie from $HOME (the env is deprecated)
            self.home.mkdir(exist_ok=True)
            cookie = self.home / ".erlang.cookie"
            if not cookie.exists():
                cookie.write_text(self.cookie)
            cookie.chmod(0o400)
        if os.geteuid() == 0:  # the node runs as the rabbitmq user
            for path in [self.directory, *self.directory.rglob("*")]:
                shutil.chown(path, "rabbitmq", "rabbitmq")
        self._run(f"{RABBIT_BIN}/rabbitmq-server", "-detached")
        # await_startup fails at once until the new node has registered with epmd.
        ctl = f"{RABBIT_BIN}/rabbitmqctl"
        wait_until(
            lambda: self._run(
                ctl, "-n", self.node, "await_startup", "--timeout", "60", check=False
            ),
            timeout_s=120,
            what="rabbitmq",
        )

    def pid(self) -> int | None:
        """The node's beam process, from the pid file the node writes as it starts."""
        try:
            pid = int((self.directory / "node.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM, as a crash or an OOM kill would (no clean shutdown)."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), timeout_s=30, what="beam exit")

    def processes(self) -> list[int]:
        """The pids of this node's processes (its VM, a CLI call on it) still running: those
        whose environment names the node (its name is not on the VM's command line)."""
        mark = f"RABBITMQ_NODENAME={self.node}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environment = (entry / "environ").read_bytes().split(b"\0")
            except OSError:  # gone meanwhile, or not ours to read
                continue
            if mark in environment and _alive(int(entry.name)):
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        """Stop the node cleanly and wait until its VM is gone (killed after 60 s)."""
        pid = self.pid()  # the node removes its pid file as it stops
        self._run(f"{RABBIT_BIN}/rabbitmqctl", "-n", self.node, "stop", check=False)
        if pid is not None:
            with suppress(RuntimeError):
                wait_until(lambda: not _alive(pid), timeout_s=60, what="rabbitmq stop")
        for leftover in self.processes():  # a VM that ignored the stop, or half started
            with suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
