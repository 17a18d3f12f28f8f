"""Fuzzing a real worker with raw messages on both brokers: none crashes it, none is lost.

Each broker gets 105 messages (107 with the two normal jobs around them), Redis 20 more:
the 45 cases of :data:`HAND_MADE`, which every run must hold (40 of them with the end they
must reach), then :data:`GENERATED` made by hypothesis, the same ones on every run
(derandomized, so that a failure can be replayed). They have bodies of arbitrary bytes,
invalid UTF-8, JSON that is not a protocol v2 body, v2 bodies for real and unknown tasks,
JSON nested far too deep, bodies of 200 kB; content types real and bogus (pickle, YAML,
msgpack among them); headers with task names and job ids of every type, and Celery's own
headers with bogus values. Each is published with kombu straight onto a queue a real
`conveyor worker` consumes; on Redis, :data:`RAW_ITEMS` list items that are not kombu
envelopes at all (arbitrary bytes, envelopes with fields missing or of the wrong type)
are pushed onto the queue's list too.

Every message ends with one ledger row on that queue, terminal: ``succeeded`` (it was a
job: the hand-made valid ones must be) or ``dead``, with its copy in ``Q.dead``. The rows
are counted, so none is lost; the worker process is still alive (the test stops at once
if it exits); the queue is empty (no message stuck, none left unacknowledged); a normal
job enqueued afterwards still runs. About 5 s per broker, worker start included.
Each message gets a job id of its own (or none, or a bogus one made unique), so that no
two share a ledger row. Nothing is left behind: the `queue` fixture deletes the queue and
its dead-letter queue (and on Redis what kombu holds unacknowledged for them).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kombu.connection import Connection
from sqlalchemy import select

from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import enqueue
from conveyor.worker.constants import dead_letter_queue
from conveyor.worker.models import Job, JobState
from tests.conftest import WorkerFactory, queued_messages, state_of, wait_for

pytestmark = pytest.mark.integration

GENERATED = 60
"""Messages hypothesis makes per broker, after the hand-made ones."""
RAW_ITEMS = 20
"""Redis list items that are not kombu envelopes (Redis only)."""
SETTLE_S = 90
"""Longest wait for every message to reach its end (about 10 s on a quiet machine)."""

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
BIG = "x" * 200_000


def v2(kwargs: Any, args: Any = (), embed: Any = None) -> bytes:
    """A protocol v2 JSON body."""
    return json.dumps(
        [list(args), kwargs, EMBED if embed is None else embed], default=repr
    ).encode()


@dataclass(frozen=True)
class Case:
    """One message: what is published, how its job id header is made, what it must end as.

    ``job_id`` is a kind, not a value: ``text`` (a job id of its own, looked up by the
    test), ``absent``, ``none``, or a bogus kind (``int``, ``list``, ``long``, ``nul``,
    ``bytes``) made unique when published.
    """

    body: bytes
    content_type: str
    headers: dict[str, Any]
    job_id: str = "text"
    content_encoding: str = "binary"
    ends: JobState | None = None
    reason: str | None = None


def demo(**headers: Any) -> dict[str, Any]:
    return {"task": "demo.work", **headers}


HAND_MADE = [
    Case(v2({"n": 1, "work_ms": 0}), "application/json", demo(), ends=JobState.SUCCEEDED),
    Case(v2({"n": 2, "pad": BIG}), "application/json", demo(), ends=JobState.SUCCEEDED),
    Case(
        pickle.dumps(((), {"n": 3}, EMBED)),
        "application/x-python-serialize",
        demo(),
        ends=JobState.DEAD,
        reason="content_type",
    ),
    Case(
        yaml.safe_dump([[], {"n": 4}, EMBED]).encode(),
        "application/x-yaml",
        demo(),
        ends=JobState.DEAD,
        reason="content_type",
    ),
    # msgpack: [[], {"n": 5}, {}] in its own format (msgpack is not installed).
    Case(b"\x93\x90\x81\xa1n\x05\x80", "application/x-msgpack", demo(), ends=JobState.DEAD),
    Case(b"", "application/json", demo(), ends=JobState.DEAD),
    Case(b"", "application/json", {}, job_id="absent", ends=JobState.DEAD),
    Case(b"\xff\xfe not json {{", "application/json", demo(), ends=JobState.DEAD),
    Case(b"\xff\xfe not json {{", "application/json", {}, ends=JobState.DEAD),
    Case(b'{"n": 6}', "application/json", demo(), ends=JobState.DEAD),
    Case(b"[1, 2]", "application/json", demo(), ends=JobState.DEAD),
    Case(
        v2({"n": 7}),
        "application/json",
        {"task": "no.such.task"},
        ends=JobState.DEAD,
        reason="unknown_task",
    ),
    Case(v2({"n": -1}), "application/json", demo(), ends=JobState.DEAD, reason="invalid_payload"),
    Case(b"x" * 200_000, "application/json", demo(), ends=JobState.DEAD),
    Case(b"\xfe" * 200_000, "application/octet-stream", {}, ends=JobState.DEAD),
    Case(b"[" * 100_000, "application/json", demo(), ends=JobState.DEAD),
    Case(b"[" * 100_000, "application/json", {}, ends=JobState.DEAD),
    Case(v2({"n": 8}), "application/json", demo(), job_id="absent"),
    Case(v2({"n": 9}), "application/json", demo(), job_id="none"),
    Case(v2({"n": 10}), "application/json", demo(), job_id="long"),
    Case(v2({"n": 11}), "application/json", demo(), job_id="nul"),
    Case(v2({"n": 12}), "application/json", demo(), job_id="list"),
    *(
        Case(v2({"n": 13}), "application/json", headers, ends=JobState.DEAD)
        for headers in [
            demo(timelimit=5),
            demo(timelimit=[-1, -1]),
            demo(timelimit=["a", None]),
            demo(eta="not a time"),
            demo(expires=[1]),
            demo(idempotency_key="k" * 300),
            demo(shadow=[1]),
            demo(stamped_headers=5),
            demo(retries="many"),
            demo(compression="bogus"),
            {"task": ["demo.work"]},
            {"task": {"name": "demo.work"}},
            {"task": 19},
            {"task": "demo\x00work"},
            {"task": "\ud800"},
            {"task": "t" * 300},
        ]
    ),
    # Payloads the ledger refuses (NaN, a lone surrogate): dead under their own job id.
    Case(b'[[], {"n": 1, "x": NaN}, {}]', "application/json", demo(), ends=JobState.DEAD),
    Case(v2({"n": 1, "s": "\ud800"}), "application/json", demo(), ends=JobState.DEAD),
    Case(
        b'[[], {"n": NaN}, {}]',
        "application/json",
        {"task": "no.such.task"},
        ends=JobState.DEAD,
        reason="unknown_task",
    ),
    Case(v2({"n": 14}, embed=[1]), "application/json", demo(), ends=JobState.DEAD),
    Case(v2({"n": 15}, args=[1]), "application/json", demo(), ends=JobState.DEAD),
    # What Celery's own send_task sends: it runs.
    Case(
        v2({"n": 16}),
        "application/json",
        demo(timelimit=[30, 10], retries=0, shadow=None, argsrepr="()", lang="py"),
        content_encoding="utf-8",
        ends=JobState.SUCCEEDED,
    ),
    Case(v2({"n": 17}), "application/json", demo(timelimit=[1e308, None]), ends=JobState.SUCCEEDED),
]
"""The cases every run holds; those with ``ends`` must end so."""

# -- what hypothesis makes --------------------------------------------------------------------

KEYS = st.text(max_size=8)
"""Header keys (AMQP table keys are short UTF-8 strings)."""
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)  # AMQP carries 64-bit integers
    | st.floats(allow_nan=False, allow_infinity=False)  # in headers: RabbitMQ answers 541
    | st.text(st.characters(exclude_categories=[]), max_size=10)  # lone surrogates too
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=6,
) | st.binary(max_size=8)
TASK_HEADERS = st.one_of(
    st.just({"task": "demo.work"}),
    st.just({"task": "demo.work"}),
    st.builds(
        lambda task: {"task": task},
        st.sampled_from(["no.such.task", "", "x" * 300, "a\x00b"]) | VALUES,
    ),
    st.just({}),
)
"""Task headers: half of them a real task's, so that many messages go all the way."""
CELERY_HEADERS = st.sampled_from(
    [
        *("timelimit", "retries", "argsrepr", "kwargsrepr", "origin", "root_id", "parent_id"),
        *("group", "shadow", "lang", "compression", "ignore_result", "stamps"),
    ]
)
TIMES = ("eta", "expires")
BOGUS_TIMES = st.sampled_from(["", "not a time", "2000-13-45", 5, 1.5, [1], {"a": 1}, True])
"""Values for ``eta`` and ``expires`` that are not times (a real one would hold a job back
for its time, or let Celery drop it unrecorded: neither is what this test is about)."""
EXTRA_HEADERS = st.builds(
    lambda rest, times: {**{k: v for k, v in rest.items() if k not in TIMES}, **times},
    st.dictionaries(CELERY_HEADERS | KEYS, VALUES, max_size=3),
    st.fixed_dictionaries({}, optional=dict.fromkeys(TIMES, BOGUS_TIMES)),
)


DEMO_BODIES = st.integers(0, 99).map(lambda n: v2({"n": n, "work_ms": 0}))
BODIES = (
    st.binary(max_size=64)
    | VALUES.map(lambda value: json.dumps(value, default=repr).encode())
    | st.builds(v2, st.dictionaries(KEYS, VALUES, max_size=3), st.lists(VALUES, max_size=2))
    | DEMO_BODIES
    | DEMO_BODIES
    | st.sampled_from([b"", b"null", b"[]", b"[[], {}, {}]", b'[[], {"n": NaN}, {}]'])
    | st.sampled_from([b'[[], {"n": 1, "x": Infinity}, {}]', b'[[], {"n": -Infinity}, null]'])
)
CONTENT_TYPES = (
    st.just("application/json")
    | st.sampled_from(
        [
            "application/json",
            "application/x-python-serialize",
            "application/x-yaml",
            "application/x-msgpack",
            "application/data",
            "text/plain",
            "application/json; charset=utf-8",
        ]
    )
    | st.text(max_size=20)
)
CASES = st.builds(
    Case,
    body=BODIES,
    content_type=CONTENT_TYPES,
    headers=st.builds(
        lambda task, rest: {**rest, **task},
        TASK_HEADERS,
        EXTRA_HEADERS,
    ),
    job_id=st.sampled_from(
        ["text", "text", "absent", "none", "int", "list", "long", "nul", "bytes"]
    ),
    content_encoding=st.sampled_from(["binary", "utf-8", "", "rot13"]),
)


def envelope(queue: str) -> dict[str, Any]:
    """A Redis list item as kombu writes it, for a message that runs."""
    return {
        "body": "W1tdLCB7Im4iOiAxfSwge31d",  # base64 of [[], {"n": 1}, {}]
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "demo.work"},
        "properties": {
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": queue},
            "delivery_mode": 2,
            "delivery_tag": "tag",
            "priority": 0,
        },
    }


FIELDS = [
    ("body",),
    ("headers",),
    ("content-type",),
    ("properties",),
    ("properties", "body_encoding"),
    ("properties", "delivery_tag"),
    ("properties", "delivery_info"),
    ("properties", "delivery_info", "exchange"),
    ("properties", "delivery_info", "routing_key"),
]
NOT_TEXT: st.SearchStrategy[Any] = (
    st.none()
    | st.integers()
    | st.lists(st.integers(), max_size=2)
    | st.builds(dict)  # fresh: a field may hold another
)
"""What a broken envelope's fields become: never text, so never another queue's name."""
BREAKS = st.dictionaries(st.sampled_from(FIELDS), st.just(None) | NOT_TEXT, min_size=1, max_size=3)
RAW = st.one_of(
    st.binary(max_size=64).map(lambda raw: ("bytes", raw)),
    VALUES.map(lambda value: ("json", json.dumps(value, default=repr).encode())),
    BREAKS.map(lambda breaks: ("broken", breaks)),
)


def broken_item(breaks: dict[tuple[str, ...], Any], queue: str, job_id: str) -> bytes:
    """An envelope with the fields in ``breaks`` dropped (None) or replaced."""
    made = envelope(queue)
    made["headers"]["id"] = job_id
    made["properties"]["delivery_tag"] = job_id
    for path, value in breaks.items():
        holder: Any = made
        for step in path[:-1]:
            holder = holder.get(step) if isinstance(holder, dict) else None
        if isinstance(holder, dict):
            if value is None:
                holder.pop(path[-1], None)
            else:
                holder[path[-1]] = value
    return json.dumps(made).encode()


def drawn(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """``count`` values of ``strategy``, the same on every run (derandomized)."""
    found: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found[:count]


# -- publishing and accounting ----------------------------------------------------------------


def job_id_header(kind: str, made: str) -> Any:
    """The ``id`` header of kind ``kind``, unique by ``made``; ``...`` for no header."""
    bogus: dict[str, Callable[[], Any]] = {
        "text": lambda: made,
        "absent": lambda: ...,
        "none": lambda: None,
        "int": lambda: uuid.UUID(made[-36:]).int >> 65,
        "list": lambda: [made],
        "long": lambda: made * 4,
        "nul": lambda: f"{made}\x00",
        "bytes": lambda: made.encode() + b"\xff",
    }
    return bogus[kind]()


def publish(broker_url: str, queue: str, cases: list[Case]) -> dict[str, Case]:
    """Publish ``cases`` onto ``queue`` (confirmed on RabbitMQ); the job id of each case
    whose id is text, with it."""
    known = {}
    options = {"confirm_publish": True} if broker_url.startswith("amqp") else {}
    with Connection(broker_url, transport_options=options) as connection:
        producer = connection.Producer()
        for case in cases:
            made = f"fuzz-{uuid.uuid4()}"
            headers = dict(case.headers)
            header = job_id_header(case.job_id, made)
            if header is not ...:
                headers["id"] = header
            if case.job_id == "text":
                known[made] = case
            producer.publish(
                case.body,
                exchange="",
                routing_key=queue,
                content_type=case.content_type,
                content_encoding=case.content_encoding,
                headers=headers,
                retry=False,
            )
    return known


def push_raw(broker_url: str, queue: str, items: list[tuple[str, Any]]) -> None:
    """LPUSH ``items`` onto the queue's list, as any Redis client could."""
    client = redis.Redis.from_url(broker_url)
    try:
        for kind, item in items:
            raw = broken_item(item, queue, f"fuzz-{uuid.uuid4()}") if kind == "broken" else item
            client.lpush(queue, raw)
    finally:
        client.close()


def rows(app: ConveyorApp, queue: str) -> list[Job]:
    with app.ledger.session() as session:
        return list(session.scalars(select(Job).where(Job.queue == queue)))


def states(app: ConveyorApp, queue: str) -> dict[str, int]:
    """How many of the queue's rows are in each state."""
    return dict(Counter(row.state for row in rows(app, queue)))


def unacked(broker_url: str, queue: str) -> int:
    """Messages of ``queue`` kombu's Redis transport holds unacknowledged."""
    client = redis.Redis.from_url(broker_url)
    try:
        return sum(json.loads(value)[-1] == queue for _, value in client.hscan_iter("unacked"))
    finally:
        client.close()


def settled(
    app: ConveyorApp, queue: str, expected: int, worker: subprocess.Popen[bytes]
) -> list[Job] | None:
    """The queue's rows once there are ``expected`` of them, all terminal; else None.
    Fails at once if the worker has exited: nothing would settle any more."""
    if worker.poll() is not None:
        pytest.fail(f"the worker exited with {worker.returncode}")
    found = rows(app, queue)
    if len(found) < expected or any(not JobState(row.state).is_terminal for row in found):
        return None
    return found


def test_no_raw_message_crashes_the_worker_or_is_lost(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    broker_url: str,
    start_worker: WorkerFactory,
) -> None:
    """Every fuzzed message ends as a terminal ledger row (none lost), the dead ones also
    in ``Q.dead``; the worker lives, the queue is empty, and a normal job still runs."""
    on_redis = broker_url.startswith("redis")
    worker = start_worker(env, queue)
    warm_up = enqueue("demo.work", {"n": 0, "work_ms": 0}, queue=queue, app=app)
    wait_for(lambda: state_of(app, warm_up) == JobState.SUCCEEDED)  # consuming now

    cases = HAND_MADE + drawn(CASES, GENERATED)
    known = publish(broker_url, queue, cases)
    raw = drawn(RAW, RAW_ITEMS) if on_redis else []
    if raw:
        push_raw(broker_url, queue, raw)
    published = 1 + len(cases) + len(raw)

    try:
        ended = wait_for(lambda: settled(app, queue, published, worker), timeout_s=SETTLE_S)
    except pytest.fail.Exception as failed:
        pytest.fail(f"{published} published; rows: {states(app, queue)}; {failed}")
    assert worker.poll() is None, "the worker died"
    assert len(ended) == published, "a message made more than one ledger row"
    by_id = {row.id: row for row in ended}
    for job_id, case in known.items():
        assert job_id in by_id, f"lost: {case}"
        if case.ends is not None:
            assert by_id[job_id].state == case.ends, (case, by_id[job_id].error_message)
        if case.reason is not None:
            assert by_id[job_id].dead_reason == case.reason, case
    dead = sum(row.state == JobState.DEAD for row in ended)
    assert dead >= sum(case.ends == JobState.DEAD for case in HAND_MADE)
    assert wait_for(lambda: queued_messages(broker_url, dead_letter_queue(queue)) == dead or None)

    after = enqueue("demo.work", {"n": 1, "work_ms": 0}, queue=queue, app=app)
    assert wait_for(lambda: state_of(app, after) == JobState.SUCCEEDED)
    assert queued_messages(broker_url, queue) == 0
    if on_redis:
        assert unacked(broker_url, queue) == 0
    assert worker.poll() is None
