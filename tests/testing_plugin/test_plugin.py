"""The ``conveyor`` pytest plugin, used the way a job author uses it.

Each test writes a test module with :class:`pytest.Pytester` and runs pytest on it in a
subprocess with ``-p conveyor`` (the installed ``pytest11`` entry point), then checks what
that run reported: the inner tests are the examples a user would write. All of them use the
embedded SQLite broker and ledger in the inner test's ``tmp_path``, except the last, which
points the fixture at the shared Redis or RabbitMQ and the session's PostgreSQL ledger.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from tests.conftest import delete_queues

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner runs use the embedded default unless a test names a real broker and ledger."""
    for name in ("CONVEYOR_TEST_BROKER_URL", "CONVEYOR_TEST_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "conveyor", "-p", "no:cacheprovider", *args)


CORE_JOBS = """
import time

import pytest

from conveyor import Backoff, Fatal, JobContext, RetryAfter, job
from conveyor.testing import DrainTimeout


@job(name="shop.double")
def double(ctx: JobContext, payload: dict) -> dict:
    return {"doubled": payload["n"] * 2}


@job(name="shop.flaky", max_attempts=5, backoff=Backoff(base_s=600, max_s=3600))
def flaky(ctx: JobContext, payload: dict) -> dict:
    if ctx.attempt <= 2:
        raise ConnectionError(f"attempt {ctx.attempt}: upstream unavailable")
    return {"attempt": ctx.attempt}


@job(name="shop.later", max_attempts=5, backoff=Backoff(max_s=7200))
def later(ctx: JobContext, payload: dict) -> dict:
    if ctx.attempt <= 2:
        raise RetryAfter(3600)
    return {"attempt": ctx.attempt}


@job(name="shop.refuse")
def refuse(ctx: JobContext, payload: dict) -> None:
    raise Fatal("this order cannot be shipped")


@job(name="shop.slow")
def slow(ctx: JobContext, payload: dict) -> None:
    time.sleep(1)


def test_success_returns_its_result(conveyor):
    job_id = conveyor.enqueue("shop.double", {"n": 21})
    [done] = conveyor.drain()
    assert done["id"] == job_id
    assert done["state"] == "succeeded"
    assert done["attempts"] == 1
    assert done["result"] == {"doubled": 42}


def test_fails_twice_then_succeeds_without_waiting_for_the_backoff(conveyor):
    job_id = conveyor.enqueue("shop.flaky", {})
    [done] = conveyor.drain(timeout_s=20)  # backoff of up to 600 s, then 1200 s
    assert (done["state"], done["attempts"]) == ("succeeded", 3)
    assert done["result"] == {"attempt": 3}
    failed = [(a.attempt, a.outcome) for a in conveyor.app.ledger.attempts(job_id)]
    assert failed == [(1, "scheduled"), (2, "scheduled")]  # each failure, then a retry


def test_retry_after_an_hour_twice_is_two_hours_of_harness_time(conveyor):
    conveyor.enqueue("shop.later", {})
    [done] = conveyor.drain(timeout_s=20)
    assert (done["state"], done["attempts"]) == ("succeeded", 3)
    assert conveyor.advanced_s >= 2 * 3600 - 60


def test_fatal_ends_dead_at_once(conveyor):
    conveyor.enqueue("shop.refuse", {})
    [done] = conveyor.drain()
    assert (done["state"], done["attempts"]) == ("dead", 1)
    assert done["error"]["type"] == "conveyor.worker.errors.Fatal"
    assert done["error"]["message"] == "this order cannot be shipped"


def test_delayed_job_runs_once_its_hour_has_passed(conveyor):
    job_id = conveyor.enqueue("shop.double", {"n": 2}, delay=3600)
    assert conveyor.job(job_id).state == "scheduled"
    conveyor.advance(3000)
    assert conveyor.job(job_id).state == "scheduled"
    conveyor.advance(600)
    [done] = conveyor.drain()
    assert done["result"] == {"doubled": 4}
    assert conveyor.advanced_s == 3600  # the drain had nothing left to advance


def test_drain_advances_time_for_a_delayed_job(conveyor):
    conveyor.enqueue("shop.double", {"n": 3}, delay=3600)
    [done] = conveyor.drain()
    assert (done["state"], done["result"]) == ("succeeded", {"doubled": 6})
    assert 3500 <= conveyor.advanced_s <= 3600


def test_jobs_filters_the_ledger(conveyor):
    conveyor.enqueue("shop.double", {"n": 1})
    conveyor.enqueue("shop.refuse", {})
    conveyor.drain()
    assert [j.task for j in conveyor.jobs(state="dead")] == ["shop.refuse"]
    assert [j.state for j in conveyor.jobs(task="shop.double")] == ["succeeded"]


def test_drain_times_out_listing_the_stuck_job(conveyor):
    job_id = conveyor.enqueue("shop.slow", {})
    with pytest.raises(DrainTimeout) as caught:
        conveyor.drain(timeout_s=0.3)
    assert job_id in str(caught.value)
    assert "shop.slow" in str(caught.value)


def test_assert_enqueued_finds_the_job(conveyor):
    conveyor.enqueue("shop.double", {"n": 7, "note": "gift"})
    found = conveyor.assert_enqueued("shop.double", {"n": 7})
    assert found.payload == {"n": 7, "note": "gift"}


def test_assert_enqueued_fails_readably(conveyor):
    conveyor.enqueue("shop.double", {"n": 7})
    conveyor.assert_enqueued("shop.double", {"n": 8})
"""


def test_jobs_succeed_retry_die_and_wait_through_the_harness(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_shop=CORE_JOBS)
    result = run_inner(pytester, "-v")
    result.assert_outcomes(passed=9, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_assert_enqueued_fails_readably FAILED*",
            "*AssertionError: no job 'shop.double' with payload containing {'n': 8} "
            "was enqueued; enqueued:",
            "*shop.double * attempts=0/5 payload={'n': 7}",
        ]
    )
    assert "test_assert_enqueued_finds_the_job PASSED" in result.stdout.str()


BILLING = '''
from dataclasses import dataclass

from pydantic import BaseModel
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from conveyor import Backoff, Fatal, JobContext, RetryAfter, job


class Base(DeclarativeBase):
    pass


class Charge(Base):
    __tablename__ = "charges"
    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[int]
    amount_cents: Mapped[int]
    charge_id: Mapped[str] = mapped_column(String(64))


@dataclass
class Response:
    status: int
    id: str | None = None
    retry_after_s: float = 0


class FakePayments:
    """The payment service: busy (429, come back in 30 s) on the first call."""

    def __init__(self):
        self.calls = []

    def charge(self, invoice, idempotency_key):
        self.calls.append((invoice.customer_id, idempotency_key))
        if len(self.calls) == 1:
            return Response(429, retry_after_s=30)
        return Response(200, id=f"ch_{len(self.calls)}")


payments = FakePayments()


# The README's example job, as it is written there.
class Invoice(BaseModel):
    customer_id: int
    amount_cents: int


@job(name="billing.charge", queue="billing", max_attempts=6,
     backoff=Backoff(base_s=5, max_s=300), timeout_s=60, schema=Invoice)
def charge(ctx: JobContext, invoice: Invoice) -> dict:
    if invoice.amount_cents <= 0:
        raise Fatal("nothing to charge")           # dead-lettered at once
    response = payments.charge(invoice, idempotency_key=ctx.idempotency_key or ctx.job_id)
    if response.status == 429:
        raise RetryAfter(response.retry_after_s)   # retried when the service asks
    ctx.session.add(Charge(job_id=ctx.job_id, customer_id=invoice.customer_id,
                           amount_cents=invoice.amount_cents, charge_id=response.id))
    return {"charge_id": response.id}               # kept as the job's result


def test_charge_is_retried_when_the_service_asks_and_recorded_once(conveyor):
    Base.metadata.create_all(conveyor.app.ledger.engine)
    job_id = conveyor.enqueue("billing.charge", {"customer_id": 7, "amount_cents": 1250})
    [done] = conveyor.drain()
    assert (done["state"], done["attempts"], done["queue"]) == ("succeeded", 2, "billing")
    assert done["result"] == {"charge_id": "ch_2"}
    assert payments.calls == [(7, job_id), (7, job_id)]  # one key for every attempt
    assert conveyor.advanced_s >= 29  # the 30 s Retry-After passed without a sleep
    with conveyor.app.ledger.session() as session:
        rows = session.scalars(select(Charge)).all()
    assert [(r.job_id, r.amount_cents, r.charge_id) for r in rows] == [(job_id, 1250, "ch_2")]


def test_nothing_to_charge_is_dead_without_calling_the_service(conveyor):
    payments.calls.clear()
    conveyor.enqueue("billing.charge", {"customer_id": 7, "amount_cents": 0})
    [done] = conveyor.drain()
    assert (done["state"], done["attempts"]) == ("dead", 1)
    assert done["error"]["message"] == "nothing to charge"
    assert payments.calls == []


def test_an_invoice_without_an_amount_is_refused_at_enqueue(conveyor):
    import pytest

    from conveyor.worker.errors import PayloadInvalid

    with pytest.raises(PayloadInvalid, match="amount_cents"):
        conveyor.enqueue("billing.charge", {"customer_id": 7})
    assert conveyor.jobs() == []
'''


def test_the_readme_billing_job(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_billing=BILLING)
    result = run_inner(pytester)
    result.assert_outcomes(passed=3)


REFERENCE = '''
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conveyor.tasks.demo import DEMO_MAX_ATTEMPTS


@pytest.fixture
def receiver():
    """A webhook receiver on 127.0.0.1: answers the statuses queued in `answers`."""
    seen, answers = [], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers["Idempotency-Key"], body))
            status, headers = answers.pop(0) if answers else (200, {})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.seen, server.answers = seen, answers
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def test_webhook_retries_after_503_then_delivers(conveyor, receiver):
    receiver.answers.append((503, {"Retry-After": "120"}))
    payload = {"url": f"{receiver.url}/hooks/orders", "body": {"order": 1}}
    conveyor.enqueue("webhooks.deliver", payload, idempotency_key="order-1")
    [done] = conveyor.drain()
    assert (done["state"], done["attempts"], done["result"]) == ("succeeded", 2, {"status": 200})
    assert receiver.seen == [("/hooks/orders", "order-1", {"order": 1})] * 2
    assert conveyor.advanced_s >= 119


def test_webhook_gone_is_dead_at_once(conveyor, receiver):
    receiver.answers.append((410, {}))
    conveyor.enqueue("webhooks.deliver", {"url": f"{receiver.url}/gone", "body": {}})
    [done] = conveyor.drain()
    assert (done["state"], done["attempts"]) == ("dead", 1)
    assert "410" in done["error"]["message"]


def test_demo_jobs_end_as_their_payload_says(conveyor):
    conveyor.enqueue("demo.work", {"n": 3, "fail_times": 2, "work_ms": 0})
    conveyor.enqueue("demo.work", {"n": 4, "always_fail": True, "work_ms": 0})
    conveyor.enqueue("demo.work", {"n": 5, "fatal": True, "work_ms": 0})
    done = {job["payload"]["n"]: job for job in conveyor.drain()}
    assert (done[3]["state"], done[3]["attempts"]) == ("succeeded", 3)
    assert done[3]["result"] == {"n": 3, "square": 9, "attempt": 3}
    assert (done[4]["state"], done[4]["attempts"]) == ("dead", DEMO_MAX_ATTEMPTS)
    assert (done[5]["state"], done[5]["attempts"]) == ("dead", 1)
'''


def test_the_reference_jobs_named_by_the_ini_option(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nconveyor_task_modules = conveyor.tasks.demo, conveyor.tasks.webhooks\n"
    )
    pytester.makepyfile(test_reference=REFERENCE)
    result = run_inner(pytester)
    result.assert_outcomes(passed=3)


def test_loading_the_plugin_imports_no_celery() -> None:
    code = (
        "import sys, conveyor.testing; "
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'sqlalchemy')); "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_test_without_the_fixture_runs_as_before(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        import sys

        def test_plain():
            assert "celery.worker" not in sys.modules
        """
    )
    result = run_inner(pytester, "--strict-config")
    result.assert_outcomes(passed=1)


REAL_BROKER = """
from conveyor import Backoff, JobContext, job


@job(name="plugin.flaky", queue="QUEUE", backoff=Backoff(base_s=600, max_s=3600))
def flaky(ctx: JobContext, payload: dict) -> dict:
    if ctx.attempt <= 2:
        raise ConnectionError(f"attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


def test_flaky_job_on_a_real_broker_and_ledger(conveyor):
    assert conveyor.app.settings.broker_kind.value == "BROKER_KIND"
    job_id = conveyor.enqueue("plugin.flaky", {})
    conveyor.enqueue("plugin.flaky", {}, delay=3600)
    done = conveyor.drain()
    assert [(j["state"], j["attempts"]) for j in done] == [("succeeded", 3)] * 2
    assert {j.id for j in conveyor.jobs()} >= {job_id}
"""


def test_a_real_broker_and_ledger_by_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, broker_url: str, pg_url: str
) -> None:
    queue = f"test-plugin-{uuid.uuid4().hex[:10]}"
    kind = "redis" if broker_url.startswith("redis") else "rabbitmq"
    monkeypatch.setenv("CONVEYOR_TEST_BROKER_URL", broker_url)
    monkeypatch.setenv("CONVEYOR_TEST_DATABASE_URL", pg_url)
    pytester.makepyfile(test_real=REAL_BROKER.replace("QUEUE", queue).replace("BROKER_KIND", kind))
    try:
        result = run_inner(pytester)
        result.assert_outcomes(passed=1)
    finally:
        delete_queues(broker_url, [queue], pg_url=pg_url)
