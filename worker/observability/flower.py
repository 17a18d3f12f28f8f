"""Flower on Conveyor's Celery app, never open to anyone who can reach its port.

``conveyor flower`` runs Flower 2 in this process on the app every Conveyor command
builds (same broker, same serializers, the same registered jobs), so operators can watch
workers, task events and queue lengths live. It exists instead of a bare ``celery -A
conveyor.worker.celery_app flower`` for three reasons:

1. **Credentials are required** (promise P6). Without ``CONVEYOR_FLOWER_USER`` and
   ``CONVEYOR_FLOWER_PASSWORD`` it refuses to start, unless ``--local-dev`` asks for an
   open dashboard on a loopback address. ``FLOWER_UNAUTHENTICATED_API``, which opens
   Flower's REST API to anyone, is refused outright.
2. **Secrets stay off command lines.** Flower is handed its options in-process
   (``app.start(["flower", ...])``), so ``ps`` shows ``conveyor flower`` and never the
   password or the management API's URL.
3. **Queue lengths work, dead letters included.** Flower shows only the queues online
   workers consume, so dead-letter queues would never appear, and it cannot read queue
   lengths through Conveyor's Redis transport. :func:`adapt_flower` fixes both.

Flower's ``/healthcheck`` answers without credentials (it says "OK" and nothing else);
Flower's ``/metrics`` would too, so :func:`adapt_flower` puts it behind the login. See
docs/flower.md.

What Flower shows for a job comes from the workers' task events, and so from how
:mod:`worker.runtime` ends each Celery task: a dead letter as a FAILURE naming its error's
type, a scheduled retry as a RETRY, a skipped duplicate as no second success (the table
there, and "Each outcome in Flower" in docs/flower.md). Nothing here changes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from conveyor.config import Settings
from conveyor.config.settings import BrokerKind
from conveyor.worker.constants import DEAD_LETTER_SUFFIX, dead_letter_queue
from conveyor.worker.errors import ConfigError
from conveyor.worker.jobs import REGISTRY
from conveyor.worker.observability.probes import is_loopback

UNAUTHENTICATED_API_VARIABLE: Final = "FLOWER_UNAUTHENTICATED_API"
"""Set, Flower serves its REST API (send-task, revoke, shutdown) without credentials."""

DB_FILE_NAME: Final = "flower.db"
"""Flower's state file under ``data_dir`` (its dbm backend may add suffixes)."""

STATE_SAVE_INTERVAL_MS: Final = 60_000
"""Save the state this often, not only at shutdown, so a crash loses a minute at most."""

PURGE_OFFLINE_WORKERS_S: Final = 3600
"""Forget workers offline this long: scaled-down and replaced containers leave the list."""


@dataclass(frozen=True, kw_only=True)
class FlowerOptions:
    """Where and how ``conveyor flower`` serves (its defaults already taken from the settings)."""

    address: str
    port: int
    db: Path
    persistent: bool
    local_dev: bool


def basic_auth(settings: Settings, options: FlowerOptions) -> str | None:
    """The ``user:password`` Flower checks, or None for ``--local-dev`` without credentials.

    Raises :class:`ConfigError` when credentials are missing (and ``--local-dev`` was not
    given or the address is not loopback), or when they cannot be passed to Flower intact.
    """
    user = settings.flower_user or ""
    password = settings.flower_password.get_secret_value() if settings.flower_password else ""
    if options.local_dev and not is_loopback(options.address):
        raise ConfigError(
            f"--local-dev serves Flower without credentials, so only on a loopback address "
            f"(127.0.0.1, ::1, localhost), not {options.address or 'every address'!r}"
        )
    if not user or not password:
        if options.local_dev:
            return None
        missing = [
            name
            for name, value in (
                ("CONVEYOR_FLOWER_USER", user),
                ("CONVEYOR_FLOWER_PASSWORD", password),
            )
            if not value
        ]
        raise ConfigError(
            f"{' and '.join(missing)} must be set: Flower never runs without credentials "
            "(use --local-dev for an open dashboard on 127.0.0.1)"
        )
    # Flower splits its --basic-auth option on commas, and basic auth on the first colon.
    if ":" in user or "," in user:
        raise ConfigError("CONVEYOR_FLOWER_USER: must not contain ':' or ','")
    if "," in password:
        raise ConfigError(
            "CONVEYOR_FLOWER_PASSWORD: must not contain ',' (Flower reads a comma as the "
            "start of another credential)"
        )
    return f"{user}:{password}"


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse Flower's own switch for an unauthenticated REST API (read by Flower itself)."""
    if environ.get(UNAUTHENTICATED_API_VARIABLE) is not None:
        raise ConfigError(
            f"{UNAUTHENTICATED_API_VARIABLE} is set: it serves Flower's API without "
            "credentials, which Conveyor never does; unset it"
        )


def broker_api(settings: Settings) -> str | None:
    """The RabbitMQ management API URL for queue lengths; None on other brokers or unset."""
    if settings.broker_kind is not BrokerKind.RABBITMQ or settings.broker_api_url is None:
        return None
    url = settings.broker_api_url.get_secret_value()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            "CONVEYOR_BROKER_API_URL: expected http(s)://user:password@host:15672/api/"
        )
    return url


def conveyor_queues(settings: Settings) -> list[str]:
    """The default queue and every queue a registered job names (task modules imported)."""
    queues = {settings.default_queue}
    queues |= {spec.queue for spec in REGISTRY.values() if spec.queue}
    return sorted(queues)


def flower_argv(settings: Settings, options: FlowerOptions, auth: str | None) -> list[str]:
    """Arguments for ``app.start``: the ``flower`` command and its options.

    They never leave this process: ``app.start`` parses them in-process, so the password
    and the management API's URL are not on any command line.
    """
    argv = [
        "flower",
        f"--address={options.address}",
        f"--port={options.port}",
        f"--logging={settings.log_level.lower()}",
        f"--purge_offline_workers={PURGE_OFFLINE_WORKERS_S}",
    ]
    if auth is not None:
        argv.append(f"--basic_auth={auth}")
    if options.persistent:
        argv += [
            "--persistent=True",
            f"--db={options.db}",
            f"--state_save_interval={STATE_SAVE_INTERVAL_MS}",
        ]
    api = broker_api(settings)
    if api is not None:
        argv.append(f"--broker_api={api}")
    return argv


def with_dead_letter_queues(names: Iterable[str]) -> list[str]:
    """``names`` and each one's dead-letter queue, sorted, without ``Q.dead.dead``."""
    found = set(names)
    found |= {dead_letter_queue(name) for name in found if not name.endswith(DEAD_LETTER_SUFFIX)}
    return sorted(found)


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""What a read-only Flower still answers: every change Flower can make is a POST."""


def adapt_flower(settings: Settings, *, read_only: bool = False) -> None:
    """Fit Flower, in this process only, to Conveyor's app; call before Flower starts.

    Call it after the task modules are imported, so every job's queue is known.

    1. **Queues.** Flower lists the queues online workers consume (and, with no worker
       online, only the app's default queue), so dead-letter queues never appear. Its
       broker page and ``/api/queues/length`` list Conveyor's queues too, and each listed
       queue's ``.dead`` queue.
    2. **Broker URL.** Flower picks its queue-length reader from the scheme of the app's
       connection URI. On Redis, Conveyor's app connects through its own transport class
       (worker/transports.py), whose URI Flower rejects ("'redis' broker is not
       supported"); Flower reads the broker URL from the settings instead.
    3. **Metrics behind the login.** Flower serves ``/metrics`` to anyone (worker names,
       task names and counts); it asks for the same basic auth as every other page.
       ``/healthcheck`` (it answers "OK", nothing else) stays open for probes.
    4. **Read-only** (``read_only``, ``--read-only``, ``CONVEYOR_FLOWER_READ_ONLY``). Flower's
       send-task passes every property of the request's body to ``send_task`` (exchange,
       routing key, task id: FACTS.md), and its control API shuts workers down, revokes
       and terminates tasks, and changes pools and rate limits. A read-only Flower answers
       403 to every request but GET, HEAD and OPTIONS, before any handler runs, for people
       who should only look.
    """
    from flower.app import Flower  # type: ignore[import-untyped]
    from flower.views import BaseHandler  # type: ignore[import-untyped]
    from flower.views.monitor import Metrics  # type: ignore[import-untyped]
    from kombu.utils.url import sanitize_url
    from tornado.web import authenticated

    flower_names = BaseHandler.get_active_queue_names
    extra = conveyor_queues(settings)

    def names(handler: Any) -> list[str]:
        return with_dead_letter_queues([*flower_names(handler), *extra])

    url = settings.broker
    masked = sanitize_url(url)
    BaseHandler.get_active_queue_names = names
    if not getattr(Metrics.get, "conveyor_authenticated", False):
        Metrics.get = authenticated(Metrics.get)
        Metrics.get.conveyor_authenticated = True
    Flower.broker_uri_with_password = property(lambda _flower: url)
    Flower.broker_uri = property(lambda _flower: masked)
    if read_only:
        from flower.api import BaseApiHandler  # type: ignore[import-untyped]

        # The API's handlers have a prepare() of their own, which does not call the pages'.
        for handlers in (BaseHandler, BaseApiHandler):
            _refuse_changes(handlers)


def _refuse_changes(handler_class: Any) -> None:
    """Make every Flower handler answer 403 to a request that is not a read."""
    from tornado.web import HTTPError

    original = handler_class.prepare
    if getattr(original, "conveyor_read_only", False):
        return  # patched already, or inherits the patched one

    def prepare(handler: Any) -> Any:
        if handler.request.method not in READ_METHODS:
            raise HTTPError(403, reason="Flower is read-only (CONVEYOR_FLOWER_READ_ONLY)")
        return original(handler)

    prepare.conveyor_read_only = True  # type: ignore[attr-defined]
    handler_class.prepare = prepare
