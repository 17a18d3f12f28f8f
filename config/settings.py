"""The one settings object, read from ``CONVEYOR_*`` variables and an optional ``.env``.

Read it once at start-up with :func:`load_settings` and pass it down; nothing else
in Conveyor reads the environment. With no variables set, Conveyor runs on the
embedded default: kombu's SQLAlchemy transport over a SQLite file as broker and
SQLite as the ledger, both under ``var/``.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from conveyor.config import tls
from conveyor.config.errors import ConfigError
from conveyor.config.kinds import UNDECLARED as UNDECLARED  # re-exported
from conveyor.config.kinds import BrokerKind as BrokerKind
from conveyor.config.kinds import LogFormat as LogFormat
from conveyor.config.kinds import QueueSpec as QueueSpec
from conveyor.config.kinds import QueueType as QueueType
from conveyor.config.secret_files import SecretFiles
from conveyor.config.urls import BROKER_SCHEMES, DATABASE_SCHEMES, check_scheme
from conveyor.config.urls import sqlalchemy_url as sqlalchemy_url  # re-exported
from conveyor.worker.constants import DEAD_LETTER_SUFFIX, LEASE_S
from conveyor.worker.schedules import parse_declared


class Settings(BaseSettings):
    """Everything Conveyor can be told. Field ``x`` is set by ``CONVEYOR_X``."""

    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Secret settings may come from files: ``CONVEYOR_X_FILE`` (config/secret_files.py)."""
        files = SecretFiles(settings_cls, env=env_settings, dotenv=dotenv_settings)
        return init_settings, files, env_settings, dotenv_settings, file_secret_settings

    env: str = Field("development", description="Deployment environment name (Sentry, logs).")
    data_dir: Path = Field(Path("var"), description="Folder for the embedded broker and ledger.")
    broker_url: SecretStr | None = Field(
        None, description="Celery broker URL; unset means the embedded SQLite broker."
    )
    database_url: SecretStr | None = Field(
        None,
        description="Ledger database URL (SQLAlchemy, or libpq's multi-host form "
        "postgresql://h1:p1,h2:p2/db?target_session_attrs=read-write); unset means SQLite "
        "under data_dir.",
    )
    database_replica_url: SecretStr | None = Field(
        None,
        description="A read replica of the ledger for reads that tolerate lag (job and "
        "dead-letter lists, queue stats, metrics gauges); unset: the primary serves them.",
    )
    task_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra task modules to import, comma-separated, besides those under tasks/.",
    )
    default_queue: str = Field("default", min_length=1, max_length=200)
    queue_type: QueueType = Field(QueueType.CLASSIC, description="RabbitMQ queue type.")
    queues: dict[str, QueueSpec] = Field(
        default_factory=dict,
        description='Queues with settings of their own, as JSON: {"reports": {"prefetch": 1, '
        '"priority": true, "type": "quorum"}}. Undeclared queues get the defaults.',
    )
    redis_sentinel_master: str | None = Field(
        None,
        min_length=1,
        description="Redis Sentinel: the monitored primary's name; required with sentinel:// "
        "broker URLs (sentinel://host:26379;sentinel://host:26380;...).",
    )
    visibility_timeout_s: int = Field(
        3600, gt=0, description="Redis: seconds before an unacknowledged message is re-delivered."
    )
    task_time_limit_s: int = Field(300, gt=0, description="Hard time limit for any job.")
    job_lease_s: float = Field(
        LEASE_S,
        gt=0,
        description="How long a worker's claim on a running job lasts unless its heartbeat "
        "renews it (every 0.3 of it): a vanished worker's jobs run again this long later.",
    )
    worker_concurrency: int = Field(2, gt=0, le=256)
    shutdown_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description=(
            "Worker, on SIGTERM: seconds the jobs in flight may take to finish before they are "
            "stopped (a second SIGTERM stops them at once); keep it below the supervisor's "
            "grace period (Kubernetes terminationGracePeriodSeconds, compose stop_grace_period)."
        ),
    )
    relay_in_workers: bool = Field(
        True,
        description=(
            "Workers run the relay's duty (lease recovery, due retries, outbox rows), one "
            "elected leader at a time; false when only `conveyor relay` processes should."
        ),
    )
    prefetch_multiplier: int = Field(1, gt=0, le=64)
    task_events: bool = Field(
        False,
        description=(
            "Send Celery task events from the start (workers) and a task-sent event per "
            "enqueue (producers). Off, workers send them once a monitor asks (Flower does "
            "as it starts, and every 5 s) and producers send none."
        ),
    )
    db_pool_size: int = Field(5, gt=0, le=100)
    api_max_body_bytes: int = Field(
        1_048_576, gt=0, description="HTTP API: largest request body accepted (413 above)."
    )
    api_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="HTTP API: origins allowed to call it from a browser (CORS), "
        "comma-separated; none by default (CORS off).",
    )
    api_rate_limit_per_s: float = Field(
        100.0,
        gt=0,
        description="HTTP API: requests per second allowed per API key and kind of route "
        "(enqueue, read, admin), shared by every API process (429 above).",
    )
    api_enqueue_rate_per_s: float | None = Field(
        None, gt=0, description="HTTP API: the enqueue routes' rate per key, if not the above."
    )
    api_read_rate_per_s: float | None = Field(
        None, gt=0, description="HTTP API: the read routes' rate per key, if not the above."
    )
    api_admin_rate_per_s: float | None = Field(
        None,
        gt=0,
        description="HTTP API: the operate and admin routes' rate per key, if not the above.",
    )
    api_auth_failures_per_min: int = Field(
        30,
        gt=0,
        le=10_000,
        description="HTTP API and console: failed authentications allowed per client address "
        "at once, then one every 60/N seconds (429 beyond, before any credential is checked).",
    )
    api_max_batch: int = Field(
        500, gt=0, le=10_000, description="HTTP API: most jobs in one `POST /v1/jobs:batch`."
    )
    max_payload_bytes: int = Field(
        262_144,
        gt=0,
        le=64 * 1_048_576,
        description="Largest job payload, as JSON bytes: refused at enqueue (client, CLI, API: "
        "413), and a larger message from any producer is dead-lettered by the worker.",
    )
    max_payload_depth: int = Field(
        32, gt=0, le=500, description="Deepest nesting of objects and arrays in a job payload."
    )
    console_users: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Console: who may sign in with a password, comma-separated "
        "`name:role:hash` (`conveyor console hash-password`); API keys can always sign in.",
    )
    console_session_s: int = Field(
        28_800, gt=0, le=604_800, description="Console: how long a sign-in lasts."
    )
    console_trace_url: str | None = Field(
        None, description="Console: a trace's address in the tracing UI, with `{trace_id}`."
    )
    idempotency_window_s: int = Field(
        86_400, gt=0, description="How long an idempotency key maps to the same job."
    )
    retention_succeeded_s: int = Field(
        604_800,
        description="Seconds succeeded and cancelled jobs (and replayed dead ones) stay in the "
        "ledger after they finish; 0 or less: for ever.",
    )
    retention_dead_s: int = Field(
        2_592_000, description="Seconds dead jobs stay after they died; 0 or less: for ever."
    )
    retention_every_s: float = Field(
        60.0, gt=0, description="How often the relay's leader prunes expired jobs."
    )
    schedules: Annotated[list[dict[str, Any]], NoDecode] = Field(
        default_factory=list,
        description='Periodic jobs, as JSON: [{"name": "nightly", "task": "reports.build", '
        '"cron": "0 3 * * *", "tz": "Europe/Berlin"}] (docs/jobs.md, "Periodic jobs").',
    )
    sentry_dsn: SecretStr | None = Field(
        None, description="Sentry DSN; unset means nothing is reported to Sentry."
    )
    release: str | None = Field(
        None, description="Release name for Sentry and logs; defaults to the package version."
    )
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    log_format: LogFormat = Field(
        LogFormat.JSON, description="json: one JSON object per line; text: for a terminal."
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Worker and relay: serve /metrics here; unset: off."
    )
    metrics_address: str = Field("127.0.0.1", description="Address the /metrics server binds.")
    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token every /metrics endpoint requires; needed off loopback.",
    )
    flower_user: str | None = Field(None, description="Flower: basic-auth user name.")
    flower_password: SecretStr | None = Field(None, description="Flower: basic-auth password.")
    flower_port: int = Field(5555, ge=1, le=65535)
    flower_address: str = Field("127.0.0.1", description="Flower: address to bind.")
    flower_read_only: bool = Field(
        False,
        description="Flower: refuse every request that would change something (sending "
        "tasks, revoking, worker control); pages and the read API still answer.",
    )
    broker_api_url: SecretStr | None = Field(
        None,
        description="RabbitMQ management API URL (http://user:pass@host:15672/api/) for "
        "Flower's queue lengths.",
    )
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP endpoint for traces (http://host:4318); unset: tracing off."
    )

    # Transport security (config/tls.py, docs/tls.md). TLS is on per connection by the broker
    # URL's scheme (amqps://, rediss://) and, for the ledger, by database_tls; these files
    # verify the servers and identify Conveyor to them. Verification is never off.
    tls_ca_file: Path | None = Field(
        None,
        description="CA bundle (PEM) that verifies the broker's and the ledger's certificates "
        "over TLS; unset: the system's trusted CAs.",
    )
    tls_cert_file: Path | None = Field(
        None,
        description="Client certificate (PEM) shown to the broker and the ledger over TLS, "
        "with tls_key_file; unset: none.",
    )
    tls_key_file: Path | None = Field(
        None, description="The client certificate's private key (PEM, not encrypted)."
    )
    database_tls: bool = Field(
        False,
        description="Ledger on PostgreSQL: TLS only, the server's certificate and host name "
        "verified (sslmode=verify-full) against tls_ca_file, or the system's CAs when unset.",
    )

    @field_validator("tls_ca_file", "tls_cert_file", "tls_key_file", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value  # `X=${X:-}` in a compose file

    @field_validator("tls_ca_file", "tls_cert_file", "tls_key_file")
    @classmethod
    def _check_tls_file(cls, value: Path | None) -> Path | None:
        return tls.check_file(value)

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        tls.check(self)
        return self

    @field_validator(
        "sentry_dsn",
        "metrics_token",
        "flower_user",
        "flower_password",
        "broker_api_url",
        "otlp_endpoint",
        "release",
        "console_trace_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `X=${X:-}` in a compose file passes an empty string: that means "not set".
        return None if value == "" else value

    @field_validator("task_modules", "console_users", "api_cors_origins", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            # kombu's failover list: several URLs joined by ";" (Sentinel, or RabbitMQ nodes).
            for url in value.get_secret_value().split(";"):
                check_scheme(url.strip(), BROKER_SCHEMES, need_host=True)
        return value

    @field_validator("database_url", "database_replica_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            # No host is fine here: PostgreSQL may be reached over a Unix socket.
            check_scheme(value.get_secret_value(), DATABASE_SCHEMES, need_host=False)
        return value

    @field_validator("schedules", mode="before")
    @classmethod
    def _check_schedules(cls, value: Any) -> Any:
        """JSON text (or a list) of entries, checked as the scheduler will read them."""
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else []
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc})") from None
        parse_declared(value)  # raises ValueError naming the entry at fault
        return value

    @field_validator("queues")
    @classmethod
    def _check_queue_names(cls, value: dict[str, QueueSpec]) -> dict[str, QueueSpec]:
        for name in value:
            if not 1 <= len(name) <= 200 or not name.strip():
                raise ValueError(f"queue name {name!r}: 1 to 200 characters")
            if name.endswith(DEAD_LETTER_SUFFIX):
                raise ValueError(f"queue name {name!r}: {DEAD_LETTER_SUFFIX} names dead letters")
        return value

    def queue(self, name: str) -> QueueSpec:
        """``name``'s declared settings, or the defaults for an undeclared queue."""
        return self.queues.get(name) or UNDECLARED

    def queue_type_of(self, name: str) -> QueueType:
        return self.queue(name).type or self.queue_type

    def quorum_queues(self, names: list[str]) -> list[str]:
        """Those of ``names`` that are quorum queues on RabbitMQ (none on other brokers):
        a worker consuming any of them cannot autoscale."""
        if self.broker_kind is not BrokerKind.RABBITMQ:
            return []
        return [name for name in names if self.queue_type_of(name) is QueueType.QUORUM]

    @model_validator(mode="after")
    def _check_queue_types(self) -> Self:
        for name, spec in self.queues.items():
            if spec.priority and self.queue_type_of(name) is QueueType.QUORUM:
                raise ValueError(
                    f"CONVEYOR_QUEUES: {name!r} is a quorum queue, which has no priorities "
                    "on RabbitMQ 3.10: make it classic or drop its priority"
                )
        return self

    @model_validator(mode="after")
    def _check_sentinel_master(self) -> Self:
        if self.is_sentinel and not self.redis_sentinel_master:
            raise ValueError(
                "CONVEYOR_BROKER_URL uses sentinel://: set CONVEYOR_REDIS_SENTINEL_MASTER "
                "to the name the Sentinels monitor (their `sentinel monitor NAME ...` line)"
            )
        return self

    @property
    def is_sentinel(self) -> bool:
        """True when the broker is Redis reached through a list of Sentinels."""
        return urlsplit(self.broker).scheme == "sentinel"

    @model_validator(mode="after")
    def _check_timeouts(self) -> Self:
        if self.broker_kind is BrokerKind.REDIS and self.visibility_timeout_s <= (
            self.task_time_limit_s
        ):
            raise ValueError(
                f"CONVEYOR_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must exceed "
                f"CONVEYOR_TASK_TIME_LIMIT_S ({self.task_time_limit_s}), "
                "or Redis re-delivers jobs that are still running"
            )
        return self

    @property
    def broker(self) -> str:
        """The broker URL in effect (the embedded SQLite file when unset)."""
        if self.broker_url is not None:
            return self.broker_url.get_secret_value()
        return f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @property
    def database(self) -> str:
        """The ledger URL in effect, with PostgreSQL URLs pinned to the psycopg 3 driver (and
        libpq's TLS parameters with ``database_tls``: :func:`config.tls.database_url`)."""
        if self.database_url is None:
            return f"sqlite:///{(self.data_dir / 'ledger.sqlite').resolve()}"
        return tls.database_url(sqlalchemy_url(self.database_url.get_secret_value()), self)

    @property
    def database_replica(self) -> str | None:
        """The read replica's URL in SQLAlchemy's form, or None when there is none."""
        if self.database_replica_url is None:
            return None
        return tls.database_url(sqlalchemy_url(self.database_replica_url.get_secret_value()), self)

    @property
    def broker_kind(self) -> BrokerKind:
        scheme = urlsplit(self.broker).scheme
        if scheme.startswith("redis") or scheme == "sentinel":
            return BrokerKind.REDIS
        if scheme.startswith("sqla"):
            return BrokerKind.EMBEDDED
        return BrokerKind.RABBITMQ

    @property
    def release_name(self) -> str:
        """``CONVEYOR_RELEASE``, else the installed package's version (Sentry, traces)."""
        return self.release or package_version()

    @property
    def is_embedded(self) -> bool:
        """True when either the broker or the ledger lives in files under ``data_dir``."""
        return self.broker_url is None or self.database_url is None


def package_version() -> str:
    """The installed ``conveyor`` package's version; ``0`` when run from an uninstalled tree."""
    try:
        return version("conveyor")
    except PackageNotFoundError:
        return "0"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning any validation failure into a one-line :class:`ConfigError`.

    The message names the environment variable at fault, e.g.
    ``CONVEYOR_QUEUE_TYPE: Input should be 'classic' or 'quorum'``.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # checks across fields: their messages name the variables
            problems.append(message)
            continue
        # Within a field the path stays as written: CONVEYOR_QUEUES.reports.prefetch.
        variable, *inside = (str(part) for part in error["loc"])
        problems.append(".".join([f"CONVEYOR_{variable.upper()}", *inside]) + f": {message}")
    return "; ".join(problems)
