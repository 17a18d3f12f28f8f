"""The built wheel, installed into a fresh virtual environment and used from a service's own
directory that has packages named ``config``, ``tasks`` and ``worker`` of its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL, ROOT, delete_queues, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

NOT_SOURCES = (
    ".git",
    ".venv",
    "var",
    "build",
    "*.egg-info",
    "*_cache",
    ".hypothesis",
    "__pycache__",
)

SERVICE_JOBS = """
from conveyor import JobContext, job


@job(name="svc.double", max_attempts=2)
def double(ctx: JobContext, payload: dict) -> int:
    return payload["n"] * 2
"""

PRODUCER = """
import json, sys
import config, tasks, worker  # the service's own packages
from conveyor import enqueue

assert config.OWNER == tasks.OWNER == worker.OWNER == "the service"
print(json.dumps({"id": enqueue("svc.double", {"n": 21}, queue=sys.argv[1])}))
"""


def run(*args: str | Path, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding the wheel (its dependencies come from ours)."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "COV_"))}
    # Built from a copy: a build writes build/ and *.egg-info/ beside its sources.
    source = tmp / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp, source, cwd=tmp, env=env
    )
    (wheel,) = tmp.glob("conveyor-*.whl")
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp, env=env)
    python = venv / "bin" / "python"
    site = run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp, env=env
    )
    # Dependencies from this environment, after the fresh one's own site-packages; the
    # editable install of the checkout is not among them (a .pth there is not processed).
    (Path(site.strip()) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "-q",
        "--no-deps",
        wheel,
        cwd=tmp,
        env=env,
    )
    return venv


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_the_wheel_runs_from_a_directory_with_its_own_config_tasks_and_worker(
    installed: Path, tmp_path: Path, pg_url: str, broker_url: str
) -> None:
    service = tmp_path / "service"
    for name in ("config", "tasks", "worker"):
        (service / name).mkdir(parents=True)
        (service / name / "__init__.py").write_text('OWNER = "the service"\n')
    (service / "service_jobs.py").write_text(SERVICE_JOBS)
    queue = f"test-wheel-{uuid.uuid4().hex[:10]}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "COV_"))},
        "CONVEYOR_BROKER_URL": broker_url,
        "CONVEYOR_DATABASE_URL": pg_url,
        "CONVEYOR_DATA_DIR": str(tmp_path / "var"),
        "CONVEYOR_TASK_MODULES": "service_jobs",
        "CONVEYOR_RELAY_IN_WORKERS": "false",  # the session ledger: see conveyor_env
        "PYTHONPATH": str(service),
    }
    conveyor = installed / "bin" / "conveyor"
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [conveyor, "worker", "-Q", queue, "-c", "1", "--pool", "solo"],
        cwd=service,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        produced = run(installed / "bin" / "python", "-c", PRODUCER, queue, cwd=service, env=env)
        job_id = json.loads(produced)["id"]

        def shown() -> dict[str, object] | None:
            view: dict[str, object] = json.loads(
                run(conveyor, "jobs", "show", job_id, "--json", cwd=service, env=env)
            )
            return view if view["state"] == "succeeded" else None

        view = wait_for(shown, timeout_s=120, every_s=1)
        assert (view["task"], view["result"]) == ("svc.double", 42)
        where = run(
            installed / "bin" / "python",
            "-c",
            "import conveyor; print(conveyor.__file__)",
            cwd=service,
            env=env,
        )
        assert str(installed) in where  # the wheel's copy, not the checkout
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(60)
        log.close()
        delete_queues(REDIS_URL, [queue])


CONSOLE_FILES = """
from conveyor.worker.console.web import STATIC, TEMPLATES
print(TEMPLATES.env.get_template("job.html").filename)
print((STATIC / "console.js").is_file())
"""


def test_the_wheel_carries_the_consoles_templates_and_static_files(
    installed: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "COV_"))}
    template, script = run(
        installed / "bin" / "python", "-c", CONSOLE_FILES, cwd=tmp_path, env=env
    ).split()
    assert template.startswith(str(installed))
    assert script == "True"
