"""The processes of a chaos run: workers and a relay, supervised (restarted when they die)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Host:
    """A worker host: a network namespace whose processes reach the broker and the ledger
    over a veth pair (see :mod:`worker.chaos.hosts`)."""

    name: str

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


class Stack:
    """Real ``conveyor worker`` and ``conveyor relay`` processes on one broker and ledger.

    With ``hosts``, worker *i* runs in host ``i % len(hosts)`` (the relay stays on the
    machine's own network); without ``relay``, the workers' own relay is the only one.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        env: dict[str, str],
        queue: str,
        workers: int,
        concurrency: int,
        relay: bool = True,
        hosts: list[Host] | None = None,
    ) -> None:
        self.workdir = workdir
        self.with_relay = relay
        self.hosts = hosts or []
        self.relay: subprocess.Popen[bytes] | None = None
        self.env = env
        self.queue = queue
        self.concurrency = concurrency
        self.workers: list[subprocess.Popen[bytes]] = []
        self.started: list[subprocess.Popen[bytes]] = []
        self._wanted = workers
        self._spawned = 0
        self._lock = threading.Lock()
        self._supervising = threading.Event()

    def _spawn(self, *args: str, host: Host | None = None) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{args[0]}-{len(self.started)}.log").open("ab")
        argv = [sys.executable, "-m", "conveyor.worker.cli", *args]
        process = subprocess.Popen(
            host.command(argv) if host is not None else argv,
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self.started.append(process)
        return process

    def start(self) -> None:
        if self.with_relay:
            self.relay = self._spawn("relay", "--poll", "0.1")
        for _ in range(self._wanted):
            self.add_worker()
        self._supervising.set()
        threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True).start()

    def add_worker(self) -> subprocess.Popen[bytes]:
        with self._lock:
            host = self.hosts[self._spawned % len(self.hosts)] if self.hosts else None
            self._spawned += 1
            worker = self._spawn(
                *("worker", "-Q", self.queue, "-c", str(self.concurrency)),
                *("--loglevel", "WARNING"),
                host=host,
            )
            self.workers.append(worker)
            return worker

    def _supervise(self) -> None:
        """Like systemd or Kubernetes: a worker or relay that exits is replaced."""
        while self._supervising.is_set():
            with self._lock:
                self.workers = [w for w in self.workers if w.poll() is None]
                missing = self._wanted - len(self.workers)
            for _ in range(missing):
                self.add_worker()
            if self.relay is not None and self.relay.poll() is not None:
                self.relay = self._spawn("relay", "--poll", "0.1")
            time.sleep(0.5)

    def pool_children(self, worker: subprocess.Popen[bytes]) -> list[int]:
        path = Path(f"/proc/{worker.pid}/task/{worker.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except OSError:
            return []

    def stop(self) -> list[int]:
        """Stop everything (SIGTERM, then SIGKILL); returns pids that were still alive after."""
        self._supervising.clear()
        time.sleep(0.6)
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.started:
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return [p.pid for p in self.started if p.poll() is None]
