"""kombu's Redis transport, made safe against messages that are not kombu envelopes.

On Redis a queue is a list of JSON envelopes. Anyone who can LPUSH can put anything
there; kombu 5.7 then raises ``JSONDecodeError`` (or ``KeyError``, ``TypeError`` for JSON
that is not a whole envelope) inside the worker's event loop, which Celery treats as
unrecoverable: the worker exits, and every restart dies the same way once the garbage is
at the head of the queue (checked here). :class:`Channel` wraps such an item (anything
:func:`readable` refuses) in an envelope of content type :data:`POISON_CONTENT_TYPE`
instead, which the worker's consumer (:mod:`worker.poison`) dead-letters like any other
poison message.

Only ``_brpop_read`` and ``_get`` change, each copied from kombu 5.7 with the decode
step replaced; the package pins kombu below 5.8.
"""

from __future__ import annotations

import base64
import json
import uuid
from queue import Empty
from typing import Any, TypeGuard

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

POISON_CONTENT_TYPE = "application/x-conveyor-undecodable"


def envelope_or_poison(item: bytes | str, queue: str) -> dict[str, Any]:
    """Decode a Redis list item, or wrap it as a poison envelope if it is not one."""
    try:
        envelope = json.loads(bytes_to_str(item))
    except (ValueError, RecursionError):  # RecursionError: nested far too deep
        envelope = None
    if readable(envelope):
        return envelope
    raw = item if isinstance(item, bytes) else item.encode("utf-8", "surrogateescape")
    return {
        "body": base64.b64encode(raw).decode("ascii"),
        "content-encoding": "binary",
        "content-type": POISON_CONTENT_TYPE,
        "headers": {},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "", "routing_key": queue},
            "delivery_mode": 2,
            "priority": 0,
        },
    }


def readable(envelope: Any) -> TypeGuard[dict[str, Any]]:
    """Whether kombu 5.7 can make a message of ``envelope`` and hold it unacknowledged (what
    ``virtual.Message`` and the Redis ``QoS.append`` read): else it is handed on as poison."""
    if not isinstance(envelope, dict) or "body" not in envelope:
        return False
    properties = envelope.get("properties")
    if not isinstance(properties, dict):
        return False
    info = properties.get("delivery_info")
    return (
        isinstance(info, dict)
        and all(isinstance(info.get(key), str) for key in ("exchange", "routing_key"))
        and isinstance(properties.get("delivery_tag"), str)
        and isinstance(envelope.get("headers") or {}, dict)
        and all(isinstance(envelope.get(key), str | None) for key in TEXT_FIELDS)
        and _decodable(envelope["body"], properties.get("body_encoding"))
    )


TEXT_FIELDS = ("content-type", "content-encoding")


def _decodable(body: Any, encoding: Any) -> bool:
    """Whether kombu's ``Channel.decode_body`` turns ``body`` into text or bytes."""
    if not isinstance(body, str | None):
        return False
    if not body or not encoding:
        return True
    if encoding == "base64":
        try:
            base64.b64decode(body)
        except ValueError:  # binascii.Error: bad padding
            return False
        return True
    return isinstance(encoding, str) and encoding.lower() == "utf-8"


class PoisonSafeMixin(kombu_redis.Channel):
    """Hands undecodable list items on as poison, never crashes; mixed into both channels."""

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if dest__item:
                dest, item = dest__item
                dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)
                self.connection._deliver(envelope_or_poison(item, dest), dest)
                return True
            raise Empty()
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    return envelope_or_poison(item, queue)
            self._maybe_update_queues_expire(client, queue)
            raise Empty()


class Channel(PoisonSafeMixin, kombu_redis.Channel):
    """A Redis channel that hands undecodable list items on as poison, never crashes."""


class SentinelChannel(PoisonSafeMixin, kombu_redis.SentinelChannel):
    """The same poison-safe decoding, for a primary found through Redis Sentinel."""


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`; selected by ``broker_transport``."""

    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with :class:`SentinelChannel`; for ``sentinel://`` URLs."""

    Channel = SentinelChannel
