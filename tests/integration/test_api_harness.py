"""What the HTTP API tests share: a real ``conveyor api`` on loopback, keys made with the CLI.

Not a test module itself (it defines no tests): ``test_api*.py`` modules import from it.
Each server is a real process (uvicorn) on a free port, reached with httpx; its ledger is
the real PostgreSQL and its broker a real Redis or RabbitMQ.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import Processes, conveyor_env, run_cli

PROBLEM_JSON = "application/problem+json"
STARTUP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def api_env(pg_url: str, broker_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """Environment for `conveyor` processes, like conftest's `env`, plus API settings."""
    return conveyor_env(broker_url, pg_url, data_dir, **settings)


def create_key(env: dict[str, str], *scopes: str, name: str | None = None) -> str:
    """A new API key made by `conveyor apikey create`; returns its token."""
    name = name or f"test-{uuid.uuid4().hex[:10]}"
    args = [f"--scope={scope}" for scope in scopes]
    created = run_cli("apikey", "create", name, *args, "--json", env=env)
    assert created.returncode == 0, created.stderr
    token: str = json.loads(created.stdout)["token"]
    return token


@dataclass
class Api:
    """One running `conveyor api` process."""

    base_url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = None) -> httpx.Client:
        """An httpx client for this server, with ``token`` as its bearer key if given."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        made = httpx.Client(base_url=self.base_url, headers=headers, timeout=60)
        self.clients.append(made)
        return made

    def key(self, *scopes: str, name: str | None = None) -> str:
        return create_key(self.env, *scopes, name=name)

    def close(self) -> None:
        for made in self.clients:
            made.close()


def start_api(processes: Processes, env: dict[str, str]) -> Api:
    """Start `conveyor api` on a free loopback port; return once /healthz answers."""
    port = free_port()
    process = processes.start(env, "api", "--port", str(port), "--no-access-log")
    log = processes.tmp_path / f"api-{len(processes.started) - 1}.log"
    api = Api(f"http://127.0.0.1:{port}", env, process, log)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"conveyor api exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{api.base_url}/healthz", timeout=1).status_code == 200:
                return api
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"conveyor api did not answer /healthz within {STARTUP_TIMEOUT_S}s")


def serve(tmp_path: Path, env: dict[str, str]) -> Iterator[Api]:
    """Body of a module-scoped server fixture: start, yield, stop (SIGTERM)."""
    processes = Processes(tmp_path)
    api = start_api(processes, env)
    yield api
    api.close()
    processes.stop_all()


def assert_problem(
    response: httpx.Response, status: int, kind: str | None = None
) -> dict[str, object]:
    """The response is an RFC 9457 problem with ``status`` (and type ``kind``, if given)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem: dict[str, object] = response.json()
    assert problem["status"] == status
    assert isinstance(problem["title"], str)
    assert problem["type"] == (f"urn:conveyor:problem:{kind}" if kind else "about:blank")
    assert "Traceback" not in response.text
    assert problem["request_id"] == response.headers["x-request-id"]  # one to quote
    return problem
