"""Sentry: final failures only, and nothing of a job's payload unless its task allows it.

What reaches Sentry (the table is in ``docs/sentry.md``):

- **a dead-lettered job, once**: :class:`SentryObserver`, the last observer of the outcome
  chain (:mod:`worker.outcomes`), on each ``dead`` event — emitted by
  :meth:`worker.deadletter.DeadLetters.bury` once the dead state is recorded and published,
  for jobs and for messages that never became a task alike. Sentry's Celery integration
  reports none of them: the runtime catches a job's errors and ends the Celery task with
  what the ledger recorded (:mod:`worker.runtime`, so that Flower shows it) — a retry as
  Celery's ``Retry`` and a duplicate as ``Ignore``, which the integration ignores, and a
  dead letter as :class:`~worker.errors.DeadLettered`, which every task declares in its
  ``throws``, which the integration skips; :func:`before_send` drops any
  :class:`~worker.errors.Ended` that would reach Sentry all the same. An unreachable
  ledger becomes Celery's ``Retry`` too, and a poison message is rejected before any task
  runs. A job that fails, retries and then succeeds reports nothing.
- **an unexpected API error** (a bare 500): :func:`report_unexpected`, from
  :class:`~worker.api.problems.CatchAll`, which answers it and so hides it from the
  FastAPI integration. Problems the API explains (4xx, and the 503 of an outage) are not
  errors in Conveyor and are not reported.
- **a crash of Conveyor's own code**: the Celery integration (an exception escaping the
  runtime itself) and the interpreter's excepthook (a command that dies).

Log records become breadcrumbs, never events: a dead letter is logged *and* reported, and
the logging integration would otherwise report ``job.dead`` a second time.

:func:`scrub` (in ``before_send``) keeps payloads out: unless the event's job opted in with
``@job(log_payload=True)``, it drops breadcrumbs, request bodies, local variables, Celery
arguments and every exception message that Conveyor did not redact itself. A dead letter's
message is kept with the payload's values cut out (:func:`redactor`): messages such as
``gate sk_live_42 is closed`` or pydantic's ``input_value=...`` quote them.

Secrets never reach Sentry: ``before_send`` masks the settings' secrets and any URL's
password in every string of every event, whatever made it (:mod:`worker.observability.masking`).

``sentry_sdk`` is imported only once :func:`init_sentry` has a DSN: it adds about 0.1 s
to the start of a command, and without a DSN nothing would use it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from conveyor.config import Settings
from conveyor.worker.errors import Ended, Failure
from conveyor.worker.jobs import REGISTRY
from conveyor.worker.observability.logs import job_fields
from conveyor.worker.observability.masking import mask_event_data, protect
from conveyor.worker.outcomes import Event

if TYPE_CHECKING:
    from sentry_sdk.types import Event as SentryEvent
    from sentry_sdk.types import Hint

    from conveyor.worker.outcomes import JobEvent

log = logging.getLogger("conveyor.sentry")

FILTERED = "[Filtered]"
REDACTED_HINT = "conveyor_redacted"
"""Set in the hint of events whose exception messages Conveyor already redacted."""
MIN_REDACTED_CHARS = 4
"""Shorter payload values are not cut out of messages: they would mangle every word."""
MAX_TAG_CHARS = 200
"""Sentry drops longer tag values."""

PYDANTIC_INPUT = re.compile(r"input_value=.*?, input_type=")
FRAME = re.compile(r'^  File "(?P<path>[^"]+)", line (?P<line>\d+), in (?P<function>.+)$')


def init_sentry(settings: Settings, component: str) -> bool:
    """Start reporting to ``settings.sentry_dsn``; returns False, doing nothing, without one.

    Call it once per process, before the Celery app is built and before ``celery.worker``
    is imported: the Celery integration patches the tracer that the worker imports, and a
    prefork pool's processes inherit the client from their parent. ``component`` (the
    command, e.g. ``worker`` or ``api``) becomes a tag on every event of this process.
    """
    if settings.sentry_dsn is None:
        return False
    protect(settings)  # before_send masks its secrets in every event
    import sentry_sdk
    from sentry_sdk.integrations.argv import ArgvIntegration
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.fastapi import FastApiIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.integrations.starlette import StarletteIntegration

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.env,
        release=settings.release_name,
        send_default_pii=False,
        max_request_body_size="never",
        include_local_variables=False,
        before_send=before_send,
        # Sentry's trace headers (`sentry-trace`, `baggage`) carry the DSN's key: none on
        # job messages (anyone who reads the broker would see it) nor on a job's outgoing
        # HTTP calls (a webhook would hand it to whoever it calls). Traces are OpenTelemetry's.
        trace_propagation_targets=[],
        integrations=[
            CeleryIntegration(propagate_traces=False),
            # The API's one capture point is CatchAll; these add the request's method,
            # route and headers (credentials removed) but capture nothing themselves.
            StarletteIntegration(failed_request_status_codes=set()),
            FastApiIntegration(failed_request_status_codes=set()),
            # Log records stay breadcrumbs; as events they would report dead letters twice.
            LoggingIntegration(event_level=None),
        ],
        # `conveyor enqueue TASK PAYLOAD` carries a payload in its arguments.
        disabled_integrations=[ArgvIntegration()],
    )
    sentry_sdk.set_tag("component", component)
    return True


class SentryObserver:
    """Reports each ``dead`` event of the outcome chain, tagged with the broker's kind."""

    def __init__(self, *, broker: str) -> None:
        self.broker = broker

    def __call__(self, event: JobEvent) -> None:
        if event.event is not Event.DEAD or event.failure is None:
            return
        report_dead_letter(
            broker=self.broker,
            job_id=event.job_id,
            task=event.task,
            queue=event.queue,
            attempt=event.attempt or 0,
            reason=str(event.reason),
            failure=event.failure,
            payload=event.payload or {},
        )


def report_dead_letter(
    *,
    broker: str,
    job_id: str,
    task: str,
    queue: str,
    attempt: int,
    reason: str,
    failure: Failure,
    payload: dict[str, Any],
) -> None:
    """Send the one error event of a job that was just dead-lettered.

    Called exactly once per dead job, after its dead state is in the ledger (``attempt`` is
    the number of attempts made, 0 for a message that never became an attempt). Events
    group by task, reason and error type. The payload goes along, unredacted, only if the
    task opted in. Never raises: the job is already dead, and a reporting
    failure must not turn that recorded outcome into a redelivery.
    """
    if not _active():
        return
    import sentry_sdk

    try:
        spec = REGISTRY.get(task)
        opted_in = spec is not None and spec.log_payload
        redact = (lambda text: text) if opted_in else redactor(payload)
        event: dict[str, Any] = {
            "level": "error",
            "logger": "conveyor.deadletter",
            "transaction": task,
            "exception": {"values": [exception_of(failure, redact)]},
            "tags": {
                name: str(value)[:MAX_TAG_CHARS]
                for name, value in (
                    ("job_id", job_id),
                    ("task", task),
                    ("queue", queue),
                    ("attempt", attempt),
                    ("broker", broker),
                    ("reason", reason),
                )
            },
            "fingerprint": [task, reason, failure.error_type],
        }
        if opted_in:
            event["extra"] = {"payload": payload}
        sentry_sdk.capture_event(cast("SentryEvent", event), hint={REDACTED_HINT: True})
    except Exception:
        log.exception("sentry.report_failed", extra=job_fields(job_id, task, queue, attempt))


def report_unexpected(error: BaseException) -> None:
    """Report an exception that Conveyor caught but cannot explain (the API's bare 500).

    Its message is dropped by :func:`scrub`: a database error's message quotes the
    statement's parameters, which may be payload values. Without Sentry, does nothing.
    """
    if not _active():
        return
    import sentry_sdk

    sentry_sdk.capture_exception(error)


def _active() -> bool:
    """Whether this process reports to Sentry; cheap, importing nothing, when it does not."""
    if "sentry_sdk" not in sys.modules:  # never imported, so never initialised
        return False
    import sentry_sdk

    return sentry_sdk.get_client().is_active()


def exception_of(failure: Failure, redact: Callable[[str], str]) -> dict[str, Any]:
    """A Sentry exception for a recorded failure: type, redacted message, stack if known."""
    module, _, name = failure.error_type.rpartition(".")
    value: dict[str, Any] = {
        "type": name,
        "value": redact(failure.message),
        "mechanism": {"type": "conveyor.dead_letter", "handled": True},
    }
    if module:
        value["module"] = module
    frames = frames_of(failure.traceback)
    if frames:
        value["stacktrace"] = {"frames": frames}
    return value


def frames_of(formatted: str | None) -> list[dict[str, Any]]:
    """The frames of the last exception in a formatted traceback, outermost first.

    Only file, line, function and source line are read: never the message lines, which
    may quote the payload.
    """
    if not formatted:
        return []
    lines = formatted.rsplit("Traceback (most recent call last):", 1)[-1].splitlines()
    frames: list[dict[str, Any]] = []
    for index, line in enumerate(lines):
        found = FRAME.match(line)
        if found is None:
            continue
        frame: dict[str, Any] = {
            "filename": found["path"],
            "abs_path": found["path"],
            "lineno": int(found["line"]),
            "function": found["function"],
        }
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if following.startswith("    ") and following.strip().strip("^~ "):
            frame["context_line"] = following.strip()
        frames.append(frame)
    return frames


def redactor(payload: Any) -> Callable[[str], str]:
    """A function that cuts ``payload``'s values (and pydantic's quotes of input) out of text.

    Values are matched as written and as ``repr`` and JSON escape them; those shorter than
    :data:`MIN_REDACTED_CHARS` are kept, so a short value can still show through.
    """
    secrets: set[str] = set()
    for value in _leaves(payload):
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) >= MIN_REDACTED_CHARS:
            secrets |= {text, repr(text)[1:-1], json.dumps(text)[1:-1]}
    ordered = sorted(secrets, key=len, reverse=True)  # longest first: no partial leftovers

    def redact(text: str) -> str:
        text = PYDANTIC_INPUT.sub(f"input_value={FILTERED}, input_type=", text)
        for secret in ordered:
            text = text.replace(secret, FILTERED)
        return text

    return redact


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        yield value


def before_send(event: SentryEvent, hint: Hint) -> SentryEvent | None:
    """Sentry's ``before_send``: drop the exceptions that end Conveyor's tasks, then
    :func:`scrub` the rest, and mask secrets in what is left (every string of the event:
    :mod:`~worker.observability.masking`).

    An :class:`~worker.errors.Ended` (a dead letter, a scheduled retry, a skipped
    duplicate) is an outcome the ledger recorded, not an error of Conveyor's: the dead
    letter's one event is :class:`SentryObserver`'s. The Celery integration already skips
    them (``throws``, ``Retry``, ``Ignore``); this holds whatever else captures them.
    """
    exc_info = hint.get("exc_info")
    if exc_info and isinstance(exc_info[1], Ended):
        return None
    return cast("SentryEvent", mask_event_data(cast(dict[str, Any], scrub(event, hint))))


def scrub(event: SentryEvent, hint: Hint) -> SentryEvent:
    """Sentry's ``before_send``: remove whatever may hold a job's payload, unless it opted in.

    Runs in every process for every error event, whoever made it. An event belongs to a
    job by its ``task`` tag (dead letters) or the Celery integration's ``celery-job``
    extra; events of no job (the API, a crashed command) never carry payloads.
    """
    data = cast(dict[str, Any], event)
    if _opted_in(data):
        return event
    # A job's breadcrumbs are its log lines, queries and HTTP calls: any may quote it.
    data.pop("breadcrumbs", None)
    request = data.get("request")
    if isinstance(request, dict):
        request.pop("data", None)
    extra = data.get("extra")
    if isinstance(extra, dict):
        extra.pop("payload", None)
        job = extra.get("celery-job")
        if isinstance(job, dict):
            job["args"] = job["kwargs"] = FILTERED
    redacted = bool(hint.get(REDACTED_HINT))
    for value in (data.get("exception") or {}).get("values") or []:
        if not redacted:
            value["value"] = FILTERED
        for frame in (value.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    return event


def _opted_in(event: dict[str, Any]) -> bool:
    task = (event.get("tags") or {}).get("task")
    if task is None:
        task = ((event.get("extra") or {}).get("celery-job") or {}).get("task_name")
    spec = REGISTRY.get(task) if isinstance(task, str) else None
    return spec is not None and spec.log_payload
