"""Health checks and the /metrics server of workers and relays.

A worker or relay started with ``--metrics-port`` (``CONVEYOR_METRICS_PORT``) serves, from
a thread of its main process:

- ``/metrics``: Prometheus exposition; with ``CONVEYOR_METRICS_TOKEN`` set it requires
  ``Authorization: Bearer <token>``. Without a token it answers only on a loopback
  address; bound elsewhere, it refuses every scrape (403) until a token is set;
- ``/healthz`` (liveness): 200 while the process does its work, else 503. For a worker
  that means its consumer is connected and consuming every queue it should: a worker that
  is alive but has stopped consuming (Celery can end up so after a broker reconnect)
  fails this probe and gets restarted. For a relay, its loop finished a pass recently;
- ``/readyz`` (readiness): the ledger and the broker answer (:func:`readiness`).

``/healthz`` and ``/readyz`` need no credentials and tell only ok or which check failed.
``conveyor health`` runs the same readiness checks, or asks a running process's
``/healthz`` with ``--url``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from celery import bootsteps
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import text

from conveyor.worker.errors import ConfigError
from conveyor.worker.observability.metrics import registry_for_scrape

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from conveyor.worker.app import ConveyorApp

log = logging.getLogger("conveyor.probes")

CHECK_TIMEOUT_S: Final = 2.0
BEAT_EVERY_S: Final = 2.0
"""How often a worker's consumer proves it is connected and consuming."""
STALE_AFTER_S: Final = 10.0
"""A worker or relay is not live once its last proof is older than this."""


def check_ledger(app: ConveyorApp) -> None:
    """Raises unless the ledger answers ``SELECT 1``."""
    with app.ledger.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def check_broker(app: ConveyorApp) -> None:
    """Raises unless a fresh connection to the broker opens within :data:`CHECK_TIMEOUT_S`."""
    with app.connection_for_write(connect_timeout=CHECK_TIMEOUT_S) as connection:
        connection.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0, timeout=CHECK_TIMEOUT_S
        )


READINESS: Final[dict[str, Callable[[ConveyorApp], None]]] = {
    "ledger": check_ledger,
    "broker": check_broker,
}


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness check's outcome: ``ok``, ``failed`` (with the error's type) or ``timeout``."""

    name: str
    outcome: str
    error_type: str | None = None

    def describe(self) -> str:
        """``ok``, ``failed: Type`` or ``timeout``: never the error's message."""
        return f"failed: {self.error_type}" if self.outcome == "failed" else self.outcome


def readiness_checks(
    app: ConveyorApp, *, timeout_s: float = CHECK_TIMEOUT_S, event: str = "probes.not_ready"
) -> list[Check]:
    """The ledger and the broker, checked concurrently, each within ``timeout_s``.

    The one readiness check of every process: ``/readyz`` of workers, relays and the API,
    and ``conveyor health``. A failure is logged as ``event`` with its type only (a
    database error's message can quote a statement's parameters).
    """
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="conveyor-ready")
    futures = {name: pool.submit(check, app) for name, check in READINESS.items()}
    pool.shutdown(wait=False)  # a check that times out is abandoned, not waited for
    deadline = time.monotonic() + timeout_s
    checks = []
    for name, future in futures.items():
        try:
            future.result(timeout=max(deadline - time.monotonic(), 0.0))
        except FutureTimeout:
            checks.append(Check(name, "timeout"))
        except Exception as exc:
            checks.append(Check(name, "failed", type(exc).__name__))
        else:
            checks.append(Check(name, "ok"))
    for check in checks:
        if check.outcome != "ok":
            log.warning(
                event, extra={"check": check.name, "error_type": check.error_type or check.outcome}
            )
    return checks


def readiness(app: ConveyorApp) -> dict[str, str]:
    """``{"ledger": "ok"|"failed: Type"|"timeout", "broker": ...}``."""
    return {check.name: check.describe() for check in readiness_checks(app)}


def token_matches(expected: str | None, offered: str) -> bool:
    """Whether ``offered`` is the metrics token (constant time); never without a token."""
    return expected is not None and hmac.compare_digest(offered.encode(), expected.encode())


class Liveness:
    """When the process last proved it works; live while that is recent enough."""

    def __init__(self, stale_after_s: float = STALE_AFTER_S) -> None:
        self.stale_after_s = stale_after_s
        self._last: float | None = None

    def beat(self) -> None:
        self._last = time.monotonic()

    def lost(self) -> None:
        self._last = None

    @property
    def live(self) -> bool:
        return self._last is not None and time.monotonic() - self._last < self.stale_after_s


WORKER_LIVENESS = Liveness()
"""The worker process's liveness, fed by :class:`ConsumingStep`, read by ``/healthz``."""


def consuming(consumer: Any) -> bool:
    """True if the Celery consumer is connected and consumes from every queue it should
    (every queue but those it holds while they are paused: a worker whose every queue is
    paused is live, it waits for a resume)."""
    connection = getattr(consumer, "connection", None)
    tasks = getattr(consumer, "task_consumer", None)
    if connection is None or tasks is None or not connection.connected:
        return False
    queues = [queue.name for queue in tasks.queues]
    held = getattr(consumer, "held_queues", ())
    return bool(queues or held) and all(tasks.consuming_from(name) for name in queues)


class ConsumingStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer bootstep that beats :data:`WORKER_LIVENESS` while the worker consumes.

    The beat runs on the consumer's own timer, so a consumer whose event loop is stuck
    stops beating too. When the connection breaks, Celery stops the consumer's steps
    (liveness is lost at once) and starts them again after reconnecting.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._entry: Any = None

    def start(self, parent: Any) -> None:
        self._beat(parent)
        self._entry = parent.timer.call_repeatedly(BEAT_EVERY_S, self._beat, (parent,))

    def stop(self, parent: Any) -> None:
        WORKER_LIVENESS.lost()
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None

    shutdown = stop

    def _beat(self, parent: Any) -> None:
        if consuming(parent):
            WORKER_LIVENESS.beat()
        else:
            WORKER_LIVENESS.lost()


class ConsumingCollector(Collector):
    """``conveyor_worker_consuming{worker}``: 1 while live (consuming), else 0."""

    def __init__(self, worker: str, liveness: Liveness) -> None:
        self.worker = worker
        self.liveness = liveness

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(
            "conveyor_worker_consuming",
            "1 while the worker's consumer is connected and consuming its queues.",
            labels=["worker"],
        )
        gauge.add_metric([self.worker], 1.0 if self.liveness.live else 0.0)
        yield gauge


def is_loopback(address: str) -> bool:
    """True for ``localhost`` and loopback IPs (127.0.0.0/8, ::1); False for "" (every address)."""
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds: no access log."""


class ProbeServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from a daemon thread."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        live: Callable[[], bool],
        ready: Callable[[], dict[str, str]],
        token: str | None,
    ) -> None:
        self.registry = registry
        self.live = live
        self.ready = ready
        self.token = token
        self.open_metrics = False
        """Serve /metrics without a token: only ever on loopback (set by :meth:`serve`)."""

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            if self.token is None and not self.open_metrics:
                detail = "set CONVEYOR_METRICS_TOKEN to serve /metrics off loopback"
                return _json(start_response, 403, {"detail": detail})
            if not self._authorized(environ.get("HTTP_AUTHORIZATION", "")):
                return _json(start_response, 401, {"detail": "a bearer token is required"})
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [generate_latest(self.registry)]
        if path == "/healthz":
            live = self.live()
            return _json(start_response, 200 if live else 503, {"live": live})
        if path == "/readyz":
            checks = self.ready()
            ok = all(result == "ok" for result in checks.values())
            return _json(start_response, 200 if ok else 503, {"ready": ok, "checks": checks})
        return _json(start_response, 404, {"detail": "not found"})

    def _authorized(self, header: str) -> bool:
        if self.token is None:
            return True
        scheme, _, offered = header.partition(" ")
        return scheme == "Bearer" and token_matches(self.token, offered)

    def serve(self, address: str, port: int) -> WSGIServer:
        """Bind and serve in a daemon thread; returns the server (``server_port`` is bound)."""
        self.open_metrics = self.token is None and is_loopback(address)
        if self.token is None and not self.open_metrics:
            log.warning(
                "metrics.closed",
                extra={"address": address, "port": port, "detail": "no CONVEYOR_METRICS_TOKEN"},
            )
        try:
            server = make_server(address, port, self, _Server, handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(f"cannot serve /metrics on {address}:{port}: {exc}") from exc
        threading.Thread(target=server.serve_forever, name="conveyor-probes", daemon=True).start()
        return server


def _json(start_response: StartResponse, status: int, body: dict[str, Any]) -> list[bytes]:
    reason = {
        200: "OK",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        503: "Service Unavailable",
    }
    headers = [("Content-Type", "application/json")]
    if status == 401:
        headers.append(("WWW-Authenticate", "Bearer"))
    start_response(f"{status} {reason[status]}", headers)
    return [json.dumps(body).encode()]


def serve_probes(
    app: ConveyorApp,
    *,
    port: int,
    live: Callable[[], bool],
    extra: Collector | None = None,
    with_queue_gauges: bool = False,
) -> WSGIServer:
    """Start the probe server for a worker or relay on ``app``'s settings; with
    ``with_queue_gauges`` (the relay) its /metrics also reads the ledger's queue gauges and
    the broker's unconsumed queues at each scrape."""
    settings = app.settings
    registry = registry_for_scrape(
        app.ledger if with_queue_gauges else None, broker=app if with_queue_gauges else None
    )
    if extra is not None:
        registry.register(extra)
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    server = ProbeServer(registry=registry, live=live, ready=lambda: readiness(app), token=token)
    return server.serve(settings.metrics_address, port)
