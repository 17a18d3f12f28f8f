"""The worker's consumer, with poison messages dead-lettered instead of dropped.

Celery's consumer handles messages it cannot run before any task code sees them: an
undecodable body is acknowledged and forgotten, an unknown task name or a disallowed
content type (anything but JSON, pickle included) is rejected, which on Redis deletes
it. Here each of them is buried like any dead job (:meth:`worker.deadletter.DeadLetters.bury`:
a dead row in the ledger, its queue's dead-letter queue, the outcome chain), under the
job id the message names or a fresh one, then acknowledged, so the worker keeps consuming
and the queue is never blocked. So is a message with a task header that Celery would take
for protocol v2 and then crash on, or lose in the pool (:func:`malformed`).

A message larger than ``CONVEYOR_MAX_PAYLOAD_BYTES`` (and :data:`ENVELOPE_BYTES` for
the envelope around the payload) is buried as ``too_large`` before it is decoded at all,
whoever produced it: Conveyor's own producers refuse such payloads at enqueue.

What happens to the message:

- buried → **acknowledged**;
- the ledger cannot be reached → **requeued** after a pause (:data:`LEDGER_PAUSE_S`), to
  be buried when the ledger is back: never acknowledged without a record.

Selected by Celery's ``worker_consumer`` option (:mod:`config.celery`).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.exceptions import ContentDisallowed
from sqlalchemy.exc import SQLAlchemyError

from conveyor.worker.constants import IDEMPOTENCY_HEADER, DeadReason
from conveyor.worker.deadletter import Letter, raw_body
from conveyor.worker.errors import PoisonMessage, failure_of
from conveyor.worker.observability.logs import job_fields
from conveyor.worker.pauses import holding_paused
from conveyor.worker.transports import POISON_CONTENT_TYPE

log = logging.getLogger("conveyor.poison")

ENVELOPE_BYTES = 65_536
"""Room in a message body for what surrounds the payload (protocol v2's ``[args, kwargs,
embed]``, a foreign producer's chains and callbacks)."""
LEDGER_PAUSE_S = 1.0
"""How long the consumer waits before requeueing a poison message the ledger could not
record: the ledger is down, so nothing else can make progress meanwhile either."""


def kwargs_of(message: Any) -> dict[str, Any]:
    """The job payload (kwargs) of a protocol v2 JSON body, or {} if there is none."""
    if message.content_type != "application/json":
        return {}
    try:
        body = json.loads(message.body)
    except (TypeError, ValueError, RecursionError):  # RecursionError: nested far too deep
        return {}
    if isinstance(body, list) and len(body) == 3 and isinstance(body[1], dict):
        return body[1]
    return {}


NOT_V2 = "the body is not a protocol v2 [args, kwargs, embed]"


def malformed(message: Any) -> str | None:
    """Why a message with a task header cannot run as a job (buried as ``invalid_message``),
    or None.

    Celery 5.7 takes such a message for protocol v2 and never checks it: a task name or
    job id that is not text, a body that is not ``[args, kwargs, embed]``, a ``timelimit``,
    ``shadow``, ``stamped_headers`` or ``retries`` header of another shape, an empty
    ``eta`` or ``expires`` raise in its event loop (the worker exits, and its restart dies
    on the same message) or in the pool (the message is rejected unrecorded: lost). A job
    id or key that is not UTF-8 cannot reach the ledger. A body that does not decode is
    left to Celery, which buries it (:meth:`Consumer.on_decode_error`,
    :meth:`Consumer.on_invalid_task`).
    """
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers:
        return None  # Celery handles it: on_unknown_message, or a protocol v1 body
    why = _bad_headers(headers)
    if why is not None:
        return why
    try:
        body = message.payload  # decoded once: Celery's strategy reads the same cache
    except Exception:  # undecodable, or a disallowed content type: Celery buries it
        return None
    if not isinstance(body, list | tuple) or len(body) != 3:
        return NOT_V2
    args, kwargs, embed = body
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return NOT_V2
    return None if isinstance(embed, dict | None) else NOT_V2


def _bad_headers(headers: dict[str, Any]) -> str | None:
    job_id, key = headers.get("id"), headers.get(IDEMPOTENCY_HEADER)
    if not isinstance(headers["task"], str):
        return "the task header is not text"
    if not isinstance(job_id, str) or not job_id or not _utf8(job_id):
        return "the id header is not a job id (UTF-8 text)"
    if key is not None and not _utf8(str(key)):
        return f"the {IDEMPOTENCY_HEADER} header is not UTF-8 text"
    limits = headers.get("timelimit")
    if limits and not (isinstance(limits, list | tuple) and len(limits) == 2):
        return "the timelimit header is not [hard, soft]"
    if limits and not all(_seconds(limit) for limit in limits):
        return "the timelimit header is not [hard, soft] in seconds"
    stamped = headers.get("stamped_headers")
    if stamped and not (
        isinstance(stamped, list | tuple) and all(isinstance(s, str) for s in stamped)
    ):
        return "the stamped_headers header is not a list of names"
    if not isinstance(headers.get("shadow"), str | None):
        return "the shadow header is not text"
    if any(headers.get(name) is not None and not headers[name] for name in ("eta", "expires")):
        return "the eta or expires header is empty"  # Celery takes it for a time: None
    return None if isinstance(headers.get("retries", 0), int) else "retries is not a number"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _seconds(value: Any) -> bool:
    """None, or seconds the pool's timers take: a float (an int past 1e308 is none)."""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return 0 <= float(value) < math.inf
    except OverflowError:
        return False


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer; messages that cannot become tasks go to the dead-letter queue,
    messages of a paused queue go back to it (:mod:`worker.pauses`)."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = holding_paused(self, super().create_task_handler(*args, **kwargs))
        limit = self.app.settings.max_payload_bytes + ENVELOPE_BYTES

        def on_message(message: Any) -> Any:
            size = len(message.body or b"")
            if size > limit:
                exc = PoisonMessage(f"the message body is {size} bytes; the limit is {limit}")
                self.bury(message, DeadReason.TOO_LARGE, exc)
                return None
            why = malformed(message)
            if why is not None:
                self.bury(message, DeadReason.INVALID_MESSAGE, PoisonMessage(why))
                return None
            return handle(message)

        return on_message

    def add_task_queue(self, queue: str, exchange: Any = None, *args: Any, **options: Any) -> None:
        """Consume ``queue`` (remote control's ``add_consumer``, a resumed pause). A queue
        new to this worker is declared the way ``-Q`` declares it (on the broker's default
        exchange, see :class:`worker.app.DefaultExchangeAMQP`), not on an exchange named
        after it, as Celery would."""
        if exchange is None and not options:
            _ = self.app.amqp.queues[queue]  # Queues.__missing__ creates it as -Q does
        super().add_task_queue(queue, exchange, *args, **options)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if message.content_type == POISON_CONTENT_TYPE:
            self.bury(message, DeadReason.UNDECODABLE, PoisonMessage("not a message envelope"))
        elif isinstance(exc, ContentDisallowed):
            self.bury(message, DeadReason.CONTENT_TYPE, exc)
        else:
            self.bury(message, DeadReason.UNDECODABLE, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self.bury(message, DeadReason.NOT_A_TASK, PoisonMessage("no task header"))

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self.bury(message, DeadReason.UNKNOWN_TASK, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        reason = (
            DeadReason.CONTENT_TYPE
            if isinstance(exc, ContentDisallowed)
            else DeadReason.INVALID_MESSAGE
        )
        self.bury(message, reason, exc)

    def bury(self, message: Any, reason: DeadReason, exc: Exception) -> None:
        """Dead-letter ``message`` and acknowledge it; requeue it if the ledger is down."""
        letter = letter_of(message, reason, exc, self.app.settings.default_queue)
        try:
            self.app.dead_letters.bury(letter)
        except SQLAlchemyError:
            # Requeued: it is buried when the ledger is back, never acked without a record.
            log.warning("poison.ledger_unavailable", extra=job_fields(letter.job_id, letter.task))
            time.sleep(LEDGER_PAUSE_S)
            message.reject_log_error(log, self.connection_errors, requeue=True)
            return
        message.ack_log_error(log, self.connection_errors)  # acknowledged: it is buried


def letter_of(message: Any, reason: DeadReason, exc: Exception, default_queue: str) -> Letter:
    """The dead letter of a message that never became a task."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    queue = (message.delivery_info or {}).get("routing_key") or default_queue
    return Letter(
        # A message with no job id still gets a ledger row, so `conveyor dlq` shows it.
        job_id=str(headers.get("id") or uuid.uuid4()),
        task=str(headers.get("task") or "?"),
        queue=queue,
        reason=reason,
        failure=failure_of(exc, f"{reason}: {exc}"),
        # A too-large body is kept once, in ``message``, and never decoded.
        payload={}
        if reason is DeadReason.TOO_LARGE
        else kwargs_of(message) or {"_raw": raw_body(message.body)},
        message={
            "id": None if headers.get("id") is None else str(headers["id"]),  # AMQP: maybe bytes
            "headers": {k: str(v) for k, v in headers.items()},
            "content_type": message.content_type,
            **raw_body(message.body),
        },
    )
