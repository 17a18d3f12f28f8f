"""Webhook delivery against a real HTTP server on loopback.

``deliver`` is a plain function (``@job`` only registers it), so these tests call it
directly and check both what the receiver saw and which error the job raised; the
retry policy then turns that error into a decision.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import ValidationError

from conveyor.tasks.webhooks import USER_AGENT, ReceiverUnavailable, Webhook, deliver, retry_after_s
from conveyor.worker.constants import DeadReason
from conveyor.worker.errors import Fatal, Retryable, RetryAfter
from conveyor.worker.jobs import JobContext, spec_for
from conveyor.worker.policy import DeadLetter, Retry, decide

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)  # a Wednesday


# -- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "wait_s"),
    [
        ("120", 120.0),
        ("  7 ", 7.0),
        ("0", 0.0),
        (None, None),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("-5", None),  # delta-seconds are non-negative integers
        ("1.5", None),
        ("Wed, 01 Jan 2025 12:00:30 GMT", 30.0),
        ("Wed, 01 Jan 2025 13:00:30 +0100", 30.0),
        ("Wed, 01 Jan 2025 12:00:30 -0000", 30.0),  # no zone given: read as UTC
        ("Wed, 01 Jan 2025 11:00:00 GMT", 0.0),  # already past: retry now
        pytest.param("\N{SUPERSCRIPT TWO}", None, id="superscript-two"),
    ],
)
def test_retry_after_header(header: str | None, wait_s: float | None) -> None:
    assert retry_after_s(header, now=NOW) == wait_s


# -- the payload schema ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"url": "not a url", "body": {}},
        {"url": "ftp://example.com/hook", "body": {}},
        {"url": "https://example.com/hook", "body": {}, "timeout_s": 0},
        {"url": "https://example.com/hook", "body": {}, "timeout_s": -1},
        {"url": "https://example.com/hook", "body": {}, "timeout_s": 61},
        {"url": "https://example.com/hook", "body": {}, "headers": {"X-N": 1}},
    ],
)
def test_the_schema_rejects(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Webhook.model_validate(payload)


@pytest.mark.parametrize("timeout_s", [0.3, 60])
def test_the_schema_accepts_timeouts_up_to_a_minute(timeout_s: float) -> None:
    payload = {"url": "https://example.com/", "body": None, "timeout_s": timeout_s}
    assert Webhook.model_validate(payload).timeout_s == timeout_s


# -- a real receiver -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """How the receiver answers one path."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True)
class Request:
    """One request as the receiver saw it; ``headers`` keeps repeats, names lower-cased."""

    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]


@dataclass
class Receiver:
    port: int
    replies: dict[str, Reply] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A threaded HTTP server on 127.0.0.1; set ``replies[path]`` to script it."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = [(key.lower(), value) for key, value in self.headers.items()]
            state.requests.append(Request(self.path, headers, body))
            reply = state.replies.get(self.path, Reply())
            if reply.delay_s and state.stopping.wait(reply.delay_s):
                return  # the test is over; the client gave up long ago
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the client timed out and closed the connection

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state = Receiver(port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    state.stopping.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def context(*, idempotency_key: str | None = "order-42", job_id: str = "job-1") -> JobContext:
    return JobContext(
        job_id=job_id,
        attempt=1,
        max_attempts=8,
        idempotency_key=idempotency_key,
        task="webhooks.deliver",
        queue="webhooks",
    )


def hook(url: str, **fields: Any) -> Webhook:
    return Webhook.model_validate({"url": url, "body": {"event": "paid", "n": 1}, **fields})


# -- success ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("idempotency_key", "job_id", "sent_key"),
    [
        ("order-42", "job-1", "order-42"),
        (None, "job-1", "job-1"),
    ],
)
def test_a_delivery_posts_the_json_body_with_an_idempotency_key(
    receiver: Receiver, idempotency_key: str | None, job_id: str, sent_key: str
) -> None:
    body = {"event": "paid", "amount": 12.5, "items": [1, 2], "note": "café ✓", "none": None}
    payload = Webhook.model_validate({"url": receiver.url("/hook"), "body": body})

    result = deliver(context(idempotency_key=idempotency_key, job_id=job_id), payload)

    assert result == {"status": 200}
    [request] = receiver.requests
    assert request.path == "/hook"
    assert json.loads(request.body) == body
    assert request.header("Content-Type") == ["application/json"]
    assert request.header("Idempotency-Key") == [sent_key]
    assert request.header("User-Agent") == [USER_AGENT]


def test_a_204_is_a_success(receiver: Receiver) -> None:
    receiver.replies["/empty"] = Reply(204)
    assert deliver(context(), hook(receiver.url("/empty"))) == {"status": 204}
    assert len(receiver.requests) == 1


def test_custom_headers_are_sent_but_cannot_replace_the_idempotency_key(
    receiver: Receiver,
) -> None:
    headers = {"X-Signature": "sha256=abc", "Idempotency-Key": "forged"}
    deliver(context(), hook(receiver.url("/signed"), headers=headers))

    [request] = receiver.requests
    assert request.header("X-Signature") == ["sha256=abc"]
    assert request.header("Idempotency-Key") == ["order-42"]


def test_the_idempotency_key_wins_whatever_the_case_of_a_custom_header(
    receiver: Receiver,
) -> None:
    deliver(context(), hook(receiver.url("/signed"), headers={"idempotency-key": "forged"}))

    [request] = receiver.requests
    assert request.header("Idempotency-Key") == ["order-42"]


# -- failures --------------------------------------------------------------------------------


def test_a_503_with_retry_after_seconds_asks_for_that_delay(receiver: Receiver) -> None:
    receiver.replies["/busy"] = Reply(503, {"Retry-After": "3"})
    with pytest.raises(RetryAfter) as caught:
        deliver(context(), hook(receiver.url("/busy")))
    assert caught.value.delay_s == 3.0


def test_a_429_with_an_http_date_asks_for_the_time_until_then(receiver: Receiver) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    receiver.replies["/slow-down"] = Reply(429, {"Retry-After": format_datetime(when, True)})
    with pytest.raises(RetryAfter) as caught:
        deliver(context(), hook(receiver.url("/slow-down")))
    assert 110 < caught.value.delay_s <= 120  # HTTP dates have whole seconds


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (500, {}),
        (502, {}),
        (429, {}),
        (503, {"Retry-After": "soon"}),  # an unreadable Retry-After: the policy's backoff
    ],
)
def test_a_retryable_status_without_a_usable_retry_after(
    receiver: Receiver, status: int, headers: dict[str, str]
) -> None:
    receiver.replies["/down"] = Reply(status, headers)
    with pytest.raises(ReceiverUnavailable, match=f"receiver answered {status}") as caught:
        deliver(context(), hook(receiver.url("/down")))
    assert isinstance(caught.value, Retryable)
    assert not isinstance(caught.value, RetryAfter)


@pytest.mark.parametrize("status", [301, 400, 404, 410])
def test_any_other_status_is_fatal(receiver: Receiver, status: int) -> None:
    receiver.replies["/gone"] = Reply(status, {"Location": "/elsewhere"})
    with pytest.raises(Fatal, match=f"receiver answered {status}"):
        deliver(context(), hook(receiver.url("/gone")))
    assert [request.path for request in receiver.requests] == ["/gone"]  # no redirect followed


def test_a_receiver_slower_than_the_timeout_is_unavailable(receiver: Receiver) -> None:
    receiver.replies["/stuck"] = Reply(200, delay_s=1.5)
    with pytest.raises(ReceiverUnavailable, match=r"timed out after 0\.3s"):
        deliver(context(), hook(receiver.url("/stuck"), timeout_s=0.3))


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_a_closed_port_is_unavailable() -> None:
    url = f"http://127.0.0.1:{closed_port()}/hook"
    with pytest.raises(ReceiverUnavailable, match="could not reach the receiver"):
        deliver(context(), hook(url, timeout_s=2))


# -- what the policy makes of it -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reply", "decision"),
    [
        ("/busy", Reply(503, {"Retry-After": "3"}), Retry(3.0)),
        ("/down", Reply(500), Retry(2.5)),  # 0.5 * the first ceiling, 5 s
        ("/stuck", Reply(200, delay_s=1.5), Retry(2.5)),
        ("/missing", Reply(404), DeadLetter(DeadReason.FATAL)),
        ("/bad", Reply(400), DeadLetter(DeadReason.FATAL)),
    ],
)
def test_the_webhook_policy_decides_on_the_raised_error(
    receiver: Receiver, path: str, reply: Reply, decision: Retry | DeadLetter
) -> None:
    receiver.replies[path] = reply
    with pytest.raises(Exception) as caught:  # noqa: PT011  # the policy classifies it
        deliver(context(), hook(receiver.url(path), timeout_s=0.3))
    policy = spec_for("webhooks.deliver").policy
    assert decide(1, caught.value, policy, lambda: 0.5) == decision


def test_an_unreachable_receiver_is_retried_until_the_last_attempt() -> None:
    with pytest.raises(ReceiverUnavailable) as caught:
        deliver(context(), hook(f"http://127.0.0.1:{closed_port()}/", timeout_s=2))
    policy = spec_for("webhooks.deliver").policy
    assert decide(1, caught.value, policy, lambda: 1.0) == Retry(5.0)
    assert decide(8, caught.value, policy, lambda: 1.0) == DeadLetter(DeadReason.EXHAUSTED)
