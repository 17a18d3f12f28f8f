"""Fuzzing what reads a payload or a message before any job code runs: no input crashes it.

Hypothesis feeds arbitrary JSON-like values (None, booleans, integers far past 64 bits,
NaN and infinities, strings with NUL characters and lone surrogates, lists, objects with
keys that are not strings) to what admits a payload: :func:`worker.admission.storable`,
:func:`worker.admission.check_payload` (for a job without a schema, one with a pydantic
schema and a catalog entry with a JSON Schema) and the runtime's
:func:`worker.runtime.validated`. Each accepts its input or refuses it with the project's
own error (``ValueError``, :class:`PayloadInvalid`, :class:`UsageError`), nothing else; and
what it accepts comes back unchanged from JSON in UTF-8, as the wire and the ledger carry it.

It feeds arbitrary bodies (bytes, text, deeply nested JSON, protocol v2 bodies), content
types and headers to what reads a message that never became a task:
:func:`worker.poison.kwargs_of`, :func:`worker.poison.letter_of` and
:func:`worker.deadletter.raw_body`, on fake messages (any attribute of any type) and on real
:class:`kombu.message.Message` objects. They never raise, the letter is JSON, and its raw
body gives back the exact bytes; the names and errors it carries become text PostgreSQL
stores (:func:`worker.errors.storable_text`). A message with a task header that
:func:`worker.poison.malformed` lets through goes through Celery's own strategy, request
and pool hand-over without an error. Arbitrary Redis list items (bytes, JSON, broken kombu
envelopes) go to :func:`worker.transports.envelope_or_poison`: kombu can always make a
message of its result, so the worker never dies on what anyone LPUSHes. And arbitrary
headers go to :func:`worker.delivery.delivery_from_request` and to the API's
``Content-Type`` and ``Content-Length`` checks (:mod:`worker.api.body`).

Every property runs a bounded number of examples, with no deadline: ten run ``EXAMPLES``
(200) and five ``FEW`` (100), 2,500 generated examples in all, plus 19 explicit ones, a
table of 11 refused payloads and one of the 17 messages that crashed Celery before
:func:`worker.poison.malformed` refused them; a few seconds.
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery
from celery.app.trace import loads_message
from celery.exceptions import InvalidTaskError
from celery.worker.request import Request
from celery.worker.strategy import hybrid_to_proto2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from kombu.connection import Connection
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.message import Message
from kombu.utils.json import dumps as kombu_dumps
from pydantic import BaseModel, ConfigDict, Field

from conveyor.worker.admission import check_payload, storable
from conveyor.worker.api.body import _content_length, is_json
from conveyor.worker.catalog import CatalogJob, JobType
from conveyor.worker.constants import DeadReason
from conveyor.worker.deadletter import Letter, raw_body
from conveyor.worker.delivery import delivery_from_request
from conveyor.worker.errors import PayloadInvalid, PoisonMessage, UsageError, storable_text
from conveyor.worker.jobs import JobContext, JobSpec
from conveyor.worker.poison import kwargs_of, letter_of, malformed
from conveyor.worker.policy import RetryPolicy
from conveyor.worker.runtime import validated
from conveyor.worker.transports import POISON_CONTENT_TYPE, envelope_or_poison

pytestmark = pytest.mark.unit

EXAMPLES = 200
"""Examples per property for most properties."""
FEW = 100
"""Examples per property for the slower ones (several job types, kombu envelopes)."""
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_FEW = settings(max_examples=FEW, deadline=None, suppress_health_check=[HealthCheck.too_slow])

OUR_ERRORS = (ValueError, PayloadInvalid, UsageError)
"""What a producer-side check may raise: the project's own refusals."""

# -- what the strategies generate ------------------------------------------------------------

EDGE_INTS = st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30, -(10**100)])
EDGE_TEXT = st.sampled_from(["", "\x00", "a\x00b", "\ud800", "x\udfffy", "é", "\U0001f600"])
ANY_TEXT = st.text(st.characters(exclude_categories=[]), max_size=12)
"""Any code point, lone surrogates included (hypothesis leaves them out by default)."""
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | EDGE_INTS
    | st.floats()
    | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324])
    | ANY_TEXT
    | EDGE_TEXT
)
KEYS = ANY_TEXT | EDGE_TEXT | st.integers() | st.none() | st.booleans() | st.floats()
JSON_LIKE = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=10,
)
"""What a producer could hand over as a payload (or a part of one)."""
PAYLOADS = st.dictionaries(ANY_TEXT | st.sampled_from(["n", "label"]), JSON_LIKE, max_size=5)
"""Mostly objects with string keys, so that payloads also get as far as the schemas."""
ANY_PAYLOAD = PAYLOADS | JSON_LIKE


def same(left: Any, right: Any) -> bool:
    """Equal, and of the same JSON type all the way down (``1 == 1.0 == True`` is not)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(same, left, right))
    return bool(left == right)


def assert_faithful(value: Any) -> None:
    """``value`` is strict JSON, encodable in UTF-8, and comes back from it unchanged."""
    for text in (json.dumps(value, allow_nan=False), json.dumps(value, ensure_ascii=False)):
        assert same(json.loads(text.encode("utf-8")), value)


def refusal(check: Callable[[], object]) -> Exception | None:
    """The project's own error that ``check`` raised, or None if it passed; any other
    exception propagates and fails the test."""
    try:
        check()
    except OUR_ERRORS as exc:
        return exc
    return None


# -- admission: what a producer may enqueue --------------------------------------------------


def nested(depth: int) -> Any:
    """A list ``depth`` deep: ``[[[...[0]...]]]``."""
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@FUZZ
@given(JSON_LIKE)
@example({"ok": [1, 2.5, None, True, "é"]})
@example(nested(5000))  # far deeper than allowed
@example({"s": "\ud800"})
@example({1: "a"})
def test_storable_refuses_with_value_error_or_admits_json_that_comes_back_unchanged(
    value: Any,
) -> None:
    """Anything ``storable`` lets through reaches the ledger and the wire unchanged."""
    if refusal(lambda: storable(value)) is None:
        assert_faithful(value)


class Order(BaseModel):
    """A job's pydantic schema: extra keys allowed, so many payloads get through."""

    model_config = ConfigDict(extra="allow")
    n: int = Field(default=0, ge=0)
    label: str = "x"


def nothing(ctx: JobContext, payload: Any) -> None:
    """A job function that is never run."""


def spec(schema: type[BaseModel] | None) -> JobSpec:
    return JobSpec(
        name=f"fuzz.{'typed' if schema else 'plain'}",
        fn=nothing,
        queue=None,
        policy=RetryPolicy(),
        timeout_s=1.0,
        schema=schema,
        log_payload=False,
    )


ORDER_SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0}, "label": {"type": "string"}},
    "required": ["n"],
}
JOB_TYPES: dict[str, JobType] = {
    "no schema": spec(None),
    "pydantic schema": spec(Order),
    "catalog schema": CatalogJob(
        "fuzz.catalog", None, 5, ORDER_SCHEMA, "0", Draft202012Validator(ORDER_SCHEMA)
    ),
}


@pytest.mark.parametrize("kind", sorted(JOB_TYPES))
@FUZZ_FEW
@given(payload=ANY_PAYLOAD)
def test_check_payload_refuses_with_payload_invalid_or_admits_a_faithful_object(
    kind: str, payload: Any
) -> None:
    """Every producer's check (client, CLI, API) refuses only as :class:`PayloadInvalid`,
    and what it admits is a JSON object the ledger stores unchanged."""
    error = refusal(lambda: check_payload(JOB_TYPES[kind], payload))
    if error is None:
        assert isinstance(payload, dict)
        assert_faithful(payload)
    else:
        assert isinstance(error, PayloadInvalid)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ([1], "must be a JSON object"),
        (None, "must be a JSON object"),
        ({"s": "a\x00b"}, "NUL"),
        ({"s": "\ud800"}, "surrogate"),
        ({"n": math.nan}, "finite"),
        ({"n": -math.inf}, "finite"),
        ({"n": 2**63}, "64 bits"),
        ({"n": -(2**63) - 1}, "64 bits"),
        ({1: "a"}, "keys must be strings"),
        ({"a\x00": 1}, "NUL"),
        ({"deep": [{"x": [math.inf]}]}, "payload.deep[0].x[0]"),
    ],
)
def test_payloads_the_ledger_cannot_carry_are_refused_with_where_and_why(
    payload: Any, words: str
) -> None:
    """Each refusal says why, and where in the payload (the client, CLI and API show it)."""
    with pytest.raises(PayloadInvalid, match=words.replace("[", r"\[").replace(".", r"\.")):
        check_payload(JOB_TYPES["no schema"], payload)


@FUZZ
@given(payload=PAYLOADS, args=st.lists(JSON_LIKE, max_size=2))
def test_the_worker_validates_any_delivered_payload_or_refuses_it_as_invalid(
    payload: dict[str, Any], args: list[Any]
) -> None:
    """What a foreign producer sends reaches the job as its schema's model or not at all:
    :func:`validated` raises :class:`PayloadInvalid` (dead-lettered at once), nothing else."""
    delivery = delivery_from_request(
        FakeRequest(id="job-1", delivery_info={}, headers={}), payload, "default", args=tuple(args)
    )
    for job in (spec(None), spec(Order)):
        try:
            given_payload = validated(job, delivery)
        except PayloadInvalid:
            continue
        assert not args
        assert given_payload is payload if job.schema is None else isinstance(given_payload, Order)


# -- poison: messages that never became a task -----------------------------------------------


def repeat(part_times: tuple[bytes, int]) -> bytes:
    """A long body made cheaply: ``part`` said ``times`` times."""
    part, times = part_times
    return part * times


@FUZZ
@given(st.binary(max_size=64) | st.tuples(st.binary(max_size=8), st.integers(1, 1000)).map(repeat))
@example(b"")
@example(b"\xff\xfe not json {{")
@example("é".encode())
def test_raw_body_gives_back_the_exact_bytes_as_json(body: bytes) -> None:
    """A poison message's body is kept exactly: as text when it is UTF-8, else base64."""
    kept = json.loads(json.dumps(raw_body(body)))
    if "body" in kept:
        assert kept["body"].encode("utf-8") == body
    else:
        assert base64.b64decode(kept["body_base64"], validate=True) == body


def v2_body(args: Any, kwargs: Any, embed: Any) -> bytes:
    return json.dumps([args, kwargs, embed]).encode()


BODIES = (
    st.binary(max_size=64)
    | ANY_TEXT.map(lambda text: text.encode("utf-8", "surrogatepass"))
    | JSON_LIKE.map(lambda value: json.dumps(value, default=repr).encode())
    | st.builds(v2_body, JSON_LIKE, PAYLOADS, JSON_LIKE)
    | st.sampled_from([1_000, 100_000]).map(lambda depth: b"[" * depth + b"]" * depth)
    | st.sampled_from([b"", b"[]", b"[[], {}, {}]", b'[[], {"n": NaN}, {}]', b"null"])
)
"""Message bodies: bytes, text, any JSON, protocol v2 bodies, JSON nested far too deep."""
CONTENT_TYPES = (
    st.sampled_from(
        [
            "application/json",
            "application/x-python-serialize",
            "application/x-yaml",
            "application/x-msgpack",
            "application/data",
            POISON_CONTENT_TYPE,
            "",
        ]
    )
    | ANY_TEXT
    | st.none()
    | SCALARS
)
HEADER_VALUES = (
    JSON_LIKE
    | st.binary(max_size=8)
    | st.datetimes()
    | st.decimals(allow_nan=False)
    | st.sampled_from(["demo.work", "no.such.task", "x" * 300])
)
HEADERS = st.dictionaries(
    ANY_TEXT | st.sampled_from(["id", "task", "compression", "timelimit", "eta"]),
    HEADER_VALUES,
    max_size=5,
)
ROUTING_KEYS = st.none() | ANY_TEXT | st.sampled_from(["", "jobs", "q" * 300])


@dataclass
class FakeMessage:
    """A kombu-like message whose every attribute may be of any type."""

    body: Any
    content_type: Any
    headers: Any
    delivery_info: Any


FAKE_MESSAGES = st.builds(
    FakeMessage,
    body=BODIES | st.none() | ANY_TEXT,
    content_type=CONTENT_TYPES,
    headers=HEADERS | st.none() | JSON_LIKE,
    delivery_info=st.none() | st.fixed_dictionaries({}, optional={"routing_key": ROUTING_KEYS}),
)
KOMBU_MESSAGES = st.builds(
    Message,
    body=BODIES,
    content_type=CONTENT_TYPES,
    headers=HEADERS | st.none(),
    delivery_info=st.fixed_dictionaries({}, optional={"routing_key": ROUTING_KEYS}),
)
MESSAGES = FAKE_MESSAGES | KOMBU_MESSAGES
ERRORS = st.builds(PoisonMessage, ANY_TEXT) | st.builds(
    lambda cls, text: cls(text),
    st.sampled_from([ContentDisallowed, DecodeError, KeyError]),
    ANY_TEXT,
)


@FUZZ
@given(MESSAGES)
@example(FakeMessage(b"[" * 100_000, "application/json", {}, {}))
@example(FakeMessage(b'[[], {"n": 1}, {}]', "application/json", {}, {}))
def test_kwargs_of_never_raises_and_finds_a_v2_body_kwargs(message: Any) -> None:
    """Whatever the body, the consumer learns the payload or that there is none."""
    kwargs = kwargs_of(message)
    assert isinstance(kwargs, dict)
    if kwargs:
        assert message.content_type == "application/json"
        assert json.dumps(kwargs) == json.dumps(json.loads(message.body)[1])


@FUZZ
@given(
    message=MESSAGES,
    reason=st.sampled_from(DeadReason),
    error=ERRORS,
    default_queue=st.sampled_from(["default", "jobs"]),
)
@example(
    message=FakeMessage(b"[" * 100_000, "application/json", {"task": "x"}, {}),
    reason=DeadReason.UNDECODABLE,
    error=DecodeError("too deep"),
    default_queue="default",
)
@example(
    message=FakeMessage(b"\xff", "application/json", {"id": b"\xff", "task": [1]}, None),
    reason=DeadReason.UNKNOWN_TASK,
    error=KeyError("[1]"),
    default_queue="default",
)
def test_letter_of_never_raises_and_keeps_the_message_as_json(
    message: Any, reason: DeadReason, error: Exception, default_queue: str
) -> None:
    """Every poison message becomes a letter: names as text, payload and message as JSON
    (the ledger stores the payload, the ``.dead`` queue the whole record), the body kept."""
    letter = letter_of(message, reason, error, default_queue)
    assert isinstance(letter, Letter)
    assert isinstance(letter.job_id, str)
    assert letter.job_id
    assert isinstance(letter.task, str)
    assert isinstance(letter.queue, str)
    assert letter.queue
    assert isinstance(letter.payload, dict)
    json.dumps(letter.payload)
    json.dumps(letter.message)
    kombu_dumps(letter.record())
    assert letter.message is not None
    if isinstance(message.body, bytes):
        kept = letter.message
        raw = kept["body"].encode() if "body" in kept else base64.b64decode(kept["body_base64"])
        assert raw == message.body


CELERY = Celery("fuzz", set_as_current=False)
"""A Celery app (never connected) with the task the messages below name."""


def run_demo(*args: Any, **payload: Any) -> None:
    """Called as the pool child calls it, with any arguments (as Conveyor's tasks take them)."""


demo_work = CELERY.task(name="demo.work")(run_demo)


class Pool:
    """Takes what Celery hands a pool, as the prefork pool would."""

    def apply_async(self, target: Any, args: tuple[Any, ...], **options: Any) -> None:
        self.args = args


def as_celery_runs(message: Message) -> None:
    """What Celery 5.7 does with a protocol v2 message, from its strategy to the pool child:
    raises only what its consumer hands to ours (which buries the message)."""
    try:
        if "args" in message.payload:
            hybrid_to_proto2(message, message.payload)
        request = Request(message, app=CELERY, task=demo_work, hostname="fuzz@host")
        request.execute_using_pool(pool := Pool())
        _, _, request_dict, body, content_type, encoding = pool.args
        accept = {"application/json"}
        args, kwargs, embed = loads_message(body, content_type, encoding, accept=accept)
        request_dict.update({"args": args}, **embed or {})  # trace_task_ret, in the child
        demo_work.run(*args, **kwargs)  # how the task function is called
    except (InvalidTaskError, ContentDisallowed, DecodeError):
        pass


TASK_HEADERS = st.fixed_dictionaries(
    {"task": st.just("demo.work") | HEADER_VALUES, "id": st.just("job-1") | HEADER_VALUES},
    optional={
        key: HEADER_VALUES | st.sampled_from(["", 0, False, [], {}, [10**400, None], [-1, 1]])
        for key in ("timelimit", "shadow", "stamped_headers", "retries", "eta", "expires")
    }
    | {"idempotency_key": HEADER_VALUES},
)
V2_BODIES = st.builds(
    lambda *parts: json.dumps(parts).encode(), JSON_LIKE, JSON_LIKE, JSON_LIKE
) | st.builds(v2_body, st.lists(JSON_LIKE, max_size=1), PAYLOADS, st.none() | PAYLOADS)
TASK_MESSAGES = st.builds(
    Message,
    body=V2_BODIES | BODIES,
    content_type=st.just("application/json") | CONTENT_TYPES,
    content_encoding=st.sampled_from(["utf-8", "binary"]),
    headers=TASK_HEADERS,
    delivery_info=st.just({"routing_key": "jobs"}),
    accept=st.just({"application/json"}),
)


def task_message(body: bytes = b'[[], {"n": 1}, null]', **headers: Any) -> Message:
    """A JSON message for ``demo.work`` with job id ``x`` and ``headers`` on top."""
    headers = {"task": "demo.work", "id": "x", **headers}
    return Message(body, content_type="application/json", headers=headers, accept=JSON)


JSON = {"application/json"}
CRASHED_CELERY = [
    # In Celery's strategy and request, in the worker's event loop: the worker exited.
    task_message(b"null"),
    task_message(b"5"),
    task_message(b"[[], {}]"),
    task_message(id=[1]),
    task_message(task=["demo.work"]),
    task_message(timelimit=5),
    task_message(stamped_headers=5),
    task_message(eta=""),
    task_message(expires=0),
    # In the pool or after: the message was rejected unrecorded, or the worker exited.
    task_message(v2_body([], {}, [1])),
    task_message(v2_body(5, {}, None)),
    task_message(v2_body([], [], None)),
    task_message(timelimit=["a", None]),
    task_message(timelimit=[10**400, None]),  # no float: the pool's timers overflow
    task_message(shadow=[1]),
    # In the ledger: a job id it cannot hold (an id NULL, a lone surrogate) is no job.
    task_message(id=None),
    task_message(id="\ud800"),
]
"""Messages that ended the worker or were lost before :func:`malformed` refused them,
found by this file and by tests/integration/test_fuzz_poison.py."""


@FUZZ
@given(TASK_MESSAGES)
@example(task_message())
@example(task_message(timelimit=[30, None], retries=0, shadow=None, eta="2000-01-01T00:00:00"))
def test_what_the_consumer_lets_through_celery_can_run(message: Message) -> None:
    """A message with a task header that :func:`malformed` does not refuse goes through
    Celery's strategy, request and pool without an error that would end the worker or
    lose the message; what it refuses is buried with its reason."""
    why = malformed(message)
    if why is None:
        as_celery_runs(message)
    else:
        assert isinstance(why, str)
        assert why


@pytest.mark.parametrize("message", CRASHED_CELERY, ids=lambda m: repr(m.headers | {"": m.body}))
def test_messages_that_crashed_celery_are_refused(message: Message) -> None:
    """Each of them is buried with its reason instead of reaching Celery."""
    assert malformed(message)


def test_the_messages_celery_itself_sends_are_let_through() -> None:
    """``send_task``'s headers, a past ``eta``: the guard takes no real job for poison."""
    sent = task_message(timelimit=[30, None], retries=0, shadow=None, eta="2000-01-01T00:00:00")
    assert malformed(sent) is None
    as_celery_runs(sent)


@FUZZ
@given(ANY_TEXT | EDGE_TEXT)
def test_any_text_becomes_what_postgresql_stores(text: str) -> None:
    """Names and errors of poison messages reach text columns: no NUL, valid UTF-8."""
    stored = storable_text(text)
    assert "\x00" not in stored
    stored.encode("utf-8")
    if text.isascii() and "\x00" not in text:
        assert stored == text


# -- the Redis transport: list items that are not kombu envelopes ----------------------------


def envelope(body: bytes, headers: dict[str, Any], content_type: str) -> dict[str, Any]:
    """A list item as kombu 5.7's Redis transport writes it."""
    return {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "binary",
        "content-type": content_type,
        "headers": headers,
        "properties": {
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": "jobs"},
            "delivery_mode": 2,
            "delivery_tag": str(uuid.uuid4()),
            "priority": 0,
        },
    }


ENVELOPES = st.builds(
    envelope,
    body=st.binary(max_size=32),
    headers=st.dictionaries(ANY_TEXT, JSON_LIKE, max_size=3),
    content_type=st.sampled_from(["application/json", "text/plain"]),
)
"""Envelopes as kombu writes them (bodies and headers arbitrary)."""


def broken(parts: dict[str, Any]) -> dict[str, Any]:
    """A kombu envelope with some fields left out or replaced by anything."""
    made = envelope(b'[[], {"n": 1}, {}]', {"task": "demo.work", "id": "x"}, "application/json")
    for key, value in parts.items():
        target, _, field = key.rpartition(".")
        holder: Any = made
        for step in filter(None, target.split(".")):
            holder = holder.get(step) if isinstance(holder, dict) else None
        if isinstance(holder, dict):
            if value is DROP:
                holder.pop(field, None)
            else:
                holder[field] = value
    return made


DROP = object()
FIELDS = [
    "body",
    "headers",
    "content-type",
    "content-encoding",
    "properties",
    "properties.body_encoding",
    "properties.delivery_tag",
    "properties.delivery_info",
    "properties.delivery_info.exchange",
    "properties.delivery_info.routing_key",
    "properties.priority",
]
BROKEN_ENVELOPES = st.dictionaries(
    st.sampled_from(FIELDS),
    st.just(DROP) | JSON_LIKE | st.sampled_from(["base64", "utf-8", "BASE64", "*", "!!!"]),
    min_size=1,
    max_size=3,
).map(broken)
ITEMS = (
    st.binary(max_size=64)
    | JSON_LIKE.map(lambda value: json.dumps(value).encode())
    | BROKEN_ENVELOPES.map(lambda value: json.dumps(value).encode())
    | ENVELOPES.map(lambda value: json.dumps(value).encode())
)


@pytest.fixture(scope="module")
def memory_channel() -> Iterator[Any]:
    """A kombu virtual channel (in memory): it makes messages of envelopes as Redis's does."""
    with Connection("memory://") as connection:
        yield connection.default_channel


@FUZZ_FEW
@given(item=ITEMS)
@example(item=b'{"properties": {}, "body": ""}')
@example(item=b'{"properties": 1, "body": 1}')
@example(item=b'{"properties": {"body_encoding": "base64"}, "body": "@@"}')
@example(item=b"[" * 100_000)
def test_any_redis_list_item_becomes_a_message_kombu_can_read_and_the_worker_can_bury(
    memory_channel: Any, item: bytes
) -> None:
    """Whatever was pushed onto a queue's list, kombu makes a message of it (the worker's
    event loop does not die on it), the unacked hash can hold it, and it can be buried;
    what is not an envelope is handed on as poison, with its exact bytes."""
    handed = envelope_or_poison(item, "jobs")
    message = memory_channel.Message(handed, channel=memory_channel)
    info = message.delivery_info
    kombu_dumps([message._raw, info["exchange"], info["routing_key"]])  # as QoS.append does
    assert isinstance(message.delivery_tag, str)
    letter = letter_of(message, DeadReason.UNDECODABLE, PoisonMessage("x"), "default")
    kombu_dumps(letter.record())
    if handed.get("content-type") == POISON_CONTENT_TYPE:
        assert message.body == item


@FUZZ_FEW
@given(item=ENVELOPES)
def test_a_kombu_envelope_is_handed_on_unchanged(item: dict[str, Any]) -> None:
    """The poison check never takes a message kombu wrote for garbage."""
    handed = envelope_or_poison(json.dumps(item).encode(), "jobs")
    assert json.dumps(handed) == json.dumps(item)  # as text: NaN != NaN


# -- the rest of the message path: a task's headers, the API's body headers ------------------


@dataclass
class FakeRequest:
    """The parts of Celery's task request that :func:`delivery_from_request` reads."""

    id: str
    delivery_info: Any
    headers: Any


@FUZZ
@given(
    headers=HEADERS | st.none(),
    info=st.none() | st.fixed_dictionaries({}, optional={"routing_key": ROUTING_KEYS}),
)
def test_a_delivery_is_read_from_any_headers(headers: Any, info: Any) -> None:
    """Any idempotency key header becomes text, and a message always has a queue."""
    delivery = delivery_from_request(FakeRequest("job-1", info, headers), {}, "default")
    assert delivery.queue
    assert delivery.idempotency_key is None or isinstance(delivery.idempotency_key, str)


LATIN_1 = st.text(st.characters(max_codepoint=255), max_size=40)
"""Header values as Starlette hands them over: the bytes decoded as Latin-1."""


@FUZZ
@given(LATIN_1 | st.none() | st.sampled_from(["application/json; x=\n", "a/b/c", "\x00"]))
@example("application/problem+json; charset=utf-8")
def test_the_api_reads_any_content_type(content_type: str | None) -> None:
    """An odd ``Content-Type`` is a 415 (not JSON), never a 500."""
    assert isinstance(is_json(content_type), bool)


@FUZZ
@given(st.binary(max_size=20) | st.integers().map(lambda n: str(n).encode()))
@example(b"9" * 5000)
def test_the_api_reads_any_content_length(value: bytes) -> None:
    """An odd ``Content-Length`` is ignored (the bytes read are counted), never a 500."""
    declared = _content_length({"headers": [(b"content-length", value)]})
    assert declared is None or isinstance(declared, int)
