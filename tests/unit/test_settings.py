"""Settings read from CONVEYOR_* variables, and the Celery options derived from them.

Every test starts from an empty CONVEYOR_* environment in an empty working directory,
so neither the caller's shell nor a stray ``.env`` file can change the outcome.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor.config.celery import broker_priority, celery_config, worker_options
from conveyor.config.settings import BrokerKind, QueueType, load_settings
from conveyor.worker.app import create_app
from conveyor.worker.deadletter import dead_letter_destination, dead_letters_quorum
from conveyor.worker.errors import ConfigError
from conveyor.worker.heartbeat import beat_every_s

pytestmark = pytest.mark.unit

SECRET = "s3cret"


@pytest.fixture(autouse=True)
def empty_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CONVEYOR_* variable set, and a working directory without a ``.env``."""
    for name in list(os.environ):
        if name.startswith("CONVEYOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path.resolve()


def set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


# -- defaults --------------------------------------------------------------------------------


def test_with_nothing_set_everything_lives_in_files_under_var(empty_environment: Path) -> None:
    settings = load_settings()

    var = empty_environment / "var"
    assert settings.broker == f"sqla+sqlite:///{var}/broker.sqlite"
    assert settings.database == f"sqlite:///{var}/ledger.sqlite"
    assert Path(settings.broker.removeprefix("sqla+sqlite:///")).is_absolute()
    assert settings.broker_kind is BrokerKind.EMBEDDED
    assert settings.is_embedded
    assert settings.task_modules == []
    assert settings.queue_type is QueueType.CLASSIC


def test_data_dir_moves_both_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONVEYOR_DATA_DIR", str(tmp_path / "state"))
    settings = load_settings()
    assert settings.broker == f"sqla+sqlite:///{tmp_path.resolve()}/state/broker.sqlite"
    assert settings.database == f"sqlite:///{tmp_path.resolve()}/state/ledger.sqlite"


def test_a_dotenv_file_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, empty_environment: Path
) -> None:
    (empty_environment / ".env").write_text(
        "CONVEYOR_DEFAULT_QUEUE=from-file\nCONVEYOR_WORKER_CONCURRENCY=7\n"
    )
    monkeypatch.setenv("CONVEYOR_WORKER_CONCURRENCY", "3")
    settings = load_settings()
    assert (settings.default_queue, settings.worker_concurrency) == ("from-file", 3)


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_DEFAULT_QUEUE", "from-env")
    assert load_settings(default_queue="from-code").default_queue == "from-code"


# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("database_url", "database"),
    [
        ("postgresql://u:p@db:5432/conveyor", "postgresql+psycopg://u:p@db:5432/conveyor"),
        ("postgresql+psycopg://u:p@db/conveyor", "postgresql+psycopg://u:p@db/conveyor"),
        ("sqlite:////srv/ledger.sqlite", "sqlite:////srv/ledger.sqlite"),
    ],
)
def test_postgresql_urls_are_pinned_to_psycopg(
    monkeypatch: pytest.MonkeyPatch, database_url: str, database: str
) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", database_url)
    assert load_settings().database == database


@pytest.mark.parametrize(
    ("broker_url", "kind"),
    [
        ("redis://h:6379/0", BrokerKind.REDIS),
        ("rediss://h:6380/0", BrokerKind.REDIS),
        ("amqp://u:p@h:5672//", BrokerKind.RABBITMQ),
        ("amqps://h//", BrokerKind.RABBITMQ),
        ("pyamqp://h//", BrokerKind.RABBITMQ),
        ("sqla+sqlite:////srv/broker.sqlite", BrokerKind.EMBEDDED),
        ("sqla+postgresql://h/db", BrokerKind.EMBEDDED),
    ],
)
def test_the_broker_url_selects_the_broker_kind(
    monkeypatch: pytest.MonkeyPatch, broker_url: str, kind: BrokerKind
) -> None:
    monkeypatch.setenv("CONVEYOR_BROKER_URL", broker_url)
    settings = load_settings()
    assert (settings.broker, settings.broker_kind) == (broker_url, kind)


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CONVEYOR_BROKER_URL": f"http://u:{SECRET}@x"}, "CONVEYOR_BROKER_URL"),
        ({"CONVEYOR_BROKER_URL": "redis://"}, "CONVEYOR_BROKER_URL"),
        ({"CONVEYOR_BROKER_URL": f"amqp://u:{SECRET}@/vhost"}, "CONVEYOR_BROKER_URL"),
        ({"CONVEYOR_BROKER_URL": "localhost:6379"}, "CONVEYOR_BROKER_URL"),
        ({"CONVEYOR_QUEUE_TYPE": "fancy"}, "CONVEYOR_QUEUE_TYPE"),
        ({"CONVEYOR_DATABASE_URL": f"mysql://u:{SECRET}@h/db"}, "CONVEYOR_DATABASE_URL"),
        ({"CONVEYOR_DATABASE_URL": "postgres://h/db"}, "CONVEYOR_DATABASE_URL"),
        ({"CONVEYOR_WORKER_CONCURRENCY": "0"}, "CONVEYOR_WORKER_CONCURRENCY"),
        ({"CONVEYOR_PREFETCH_MULTIPLIER": "many"}, "CONVEYOR_PREFETCH_MULTIPLIER"),
        ({"CONVEYOR_LOG_LEVEL": "verbose"}, "CONVEYOR_LOG_LEVEL"),
        ({"CONVEYOR_JOB_LEASE_S": "0"}, "CONVEYOR_JOB_LEASE_S"),
        ({"CONVEYOR_JOB_LEASE_S": "-3"}, "CONVEYOR_JOB_LEASE_S"),
        ({"CONVEYOR_JOB_LEASE_S": "soon"}, "CONVEYOR_JOB_LEASE_S"),
        pytest.param(
            {
                "CONVEYOR_BROKER_URL": "redis://h",
                "CONVEYOR_VISIBILITY_TIMEOUT_S": "300",
                "CONVEYOR_TASK_TIME_LIMIT_S": "300",
            },
            "CONVEYOR_VISIBILITY_TIMEOUT_S",
            id="redis-visibility-timeout-not-above-time-limit",
        ),
    ],
)
def test_a_bad_setting_is_one_line_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str
) -> None:
    set_env(monkeypatch, env)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert variable in message
    assert SECRET not in message


def test_a_redis_visibility_timeout_not_above_the_time_limit_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(
        monkeypatch,
        {"CONVEYOR_BROKER_URL": "redis://h", "CONVEYOR_VISIBILITY_TIMEOUT_S": "300"},
    )
    with pytest.raises(
        ConfigError, match=r"CONVEYOR_VISIBILITY_TIMEOUT_S \(300\) must exceed"
    ) as caught:
        load_settings()
    assert "\n" not in str(caught.value)


def test_several_bad_settings_share_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, {"CONVEYOR_QUEUE_TYPE": "fancy", "CONVEYOR_LOG_LEVEL": "loud"})
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert "CONVEYOR_QUEUE_TYPE" in message
    assert "CONVEYOR_LOG_LEVEL" in message


@pytest.mark.parametrize(
    ("broker_url", "visibility_timeout_s", "task_time_limit_s"),
    [
        ("redis://h", "301", "300"),  # just above the limit
        ("amqp://h//", "300", "300"),  # only Redis re-delivers on a visibility timeout
        ("amqp://h//", "10", "300"),
        (None, "10", "300"),
    ],
)
def test_timeouts_that_are_accepted(
    monkeypatch: pytest.MonkeyPatch,
    broker_url: str | None,
    visibility_timeout_s: str,
    task_time_limit_s: str,
) -> None:
    if broker_url is not None:
        monkeypatch.setenv("CONVEYOR_BROKER_URL", broker_url)
    monkeypatch.setenv("CONVEYOR_VISIBILITY_TIMEOUT_S", visibility_timeout_s)
    monkeypatch.setenv("CONVEYOR_TASK_TIME_LIMIT_S", task_time_limit_s)
    settings = load_settings()
    assert settings.visibility_timeout_s == int(visibility_timeout_s)
    assert settings.task_time_limit_s == int(task_time_limit_s)


@pytest.mark.parametrize(
    ("value", "lease_s", "beat_s"),
    [
        (None, 10.0, 3.0),  # the default: renewed every 3 s
        ("3", 3.0, 0.9),  # the tests' short lease: the same three beats in a lease
        ("60", 60.0, 18.0),
    ],
)
def test_the_job_lease_is_a_setting_and_the_heartbeat_keeps_its_share(
    monkeypatch: pytest.MonkeyPatch, value: str | None, lease_s: float, beat_s: float
) -> None:
    if value is not None:
        monkeypatch.setenv("CONVEYOR_JOB_LEASE_S", value)
    settings = load_settings()
    assert settings.job_lease_s == lease_s
    assert beat_every_s(settings.job_lease_s) == pytest.approx(beat_s)
    runtime = create_app(settings).runtime  # what the workers' claims and heartbeats use
    assert (runtime.lease_s, runtime.heartbeat.lease_s) == (lease_s, lease_s)
    assert runtime.heartbeat.every_s == pytest.approx(beat_s)


# -- secrets and lists -----------------------------------------------------------------------


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        {
            "CONVEYOR_BROKER_URL": f"amqp://u:{SECRET}@h:5672//",
            "CONVEYOR_DATABASE_URL": f"postgresql://u:{SECRET}@db/conveyor",
            "CONVEYOR_SENTRY_DSN": f"https://{SECRET}@sentry.example/1",
        },
    )
    settings = load_settings()

    assert SECRET in settings.broker  # the value is there for whoever asks for it
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)


@pytest.mark.parametrize(
    ("value", "modules"),
    [
        ("a.b, c", ["a.b", "c"]),
        ("a.b", ["a.b"]),
        (" a ,, b ,", ["a", "b"]),
        ("", []),
    ],
)
def test_task_modules_are_comma_separated(
    monkeypatch: pytest.MonkeyPatch, value: str, modules: list[str]
) -> None:
    monkeypatch.setenv("CONVEYOR_TASK_MODULES", value)
    assert load_settings().task_modules == modules


# -- Celery options --------------------------------------------------------------------------


def test_celery_options_that_hold_on_every_broker() -> None:
    settings = load_settings()
    options = celery_config(settings)

    assert options["broker_url"] == settings.broker
    assert options["accept_content"] == ["json"]
    assert options["result_accept_content"] == ["json"]
    serializers = ("task_serializer", "result_serializer", "event_serializer")
    assert [options[name] for name in serializers] == ["json"] * 3
    assert options["task_acks_late"] is True
    assert options["task_reject_on_worker_lost"] is True
    assert options["worker_prefetch_multiplier"] == 1
    assert options["broker_connection_retry_on_startup"] is True
    # Task events only once a monitor asks for them (Flower does), none from producers.
    assert options["worker_send_task_events"] is False
    assert options["task_send_sent_event"] is False
    assert options["task_time_limit"] == 300
    assert "broker_transport_options" not in options
    assert "task_default_queue_type" not in options


def test_celery_options_follow_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        {
            "CONVEYOR_PREFETCH_MULTIPLIER": "4",
            "CONVEYOR_WORKER_CONCURRENCY": "8",
            "CONVEYOR_TASK_TIME_LIMIT_S": "120",
            "CONVEYOR_DEFAULT_QUEUE": "jobs",
            "CONVEYOR_TASK_EVENTS": "true",
        },
    )
    options = celery_config(load_settings())
    assert (options["worker_send_task_events"], options["task_send_sent_event"]) == (True, True)
    assert options["worker_prefetch_multiplier"] == 4
    assert options["worker_concurrency"] == 8
    assert options["task_time_limit"] == 120
    assert options["task_default_queue"] == "jobs"


def test_redis_gets_one_visibility_timeout_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        {"CONVEYOR_BROKER_URL": "redis://h:6379/0", "CONVEYOR_VISIBILITY_TIMEOUT_S": "7200"},
    )
    options = celery_config(load_settings())
    expected = {"visibility_timeout": 7200, "priority_steps": list(range(10))}
    assert options["broker_transport_options"] == expected
    assert options["result_backend_transport_options"] == expected


@pytest.mark.parametrize(
    ("broker_url", "queue_type", "transport_options", "default_queue_type", "exchange"),
    [
        ("amqp://h//", "classic", {"confirm_publish": True}, None, ""),
        # quorum queues keep an exchange per queue: Celery's delayed delivery binds to it
        ("amqp://h//", "quorum", {"confirm_publish": True}, "quorum", "default"),
        ("pyamqp://h//", "quorum", {"confirm_publish": True}, "quorum", "default"),
        # the queue type is a RabbitMQ setting: ignored on Redis and the embedded broker
        (
            "redis://h",
            "quorum",
            {"visibility_timeout": 3600, "priority_steps": list(range(10))},
            None,
            "",
        ),
        ("sqla+sqlite:////srv/broker.sqlite", "quorum", None, None, ""),
    ],
)
def test_broker_specific_options(
    monkeypatch: pytest.MonkeyPatch,
    broker_url: str,
    queue_type: str,
    transport_options: dict[str, object] | None,
    default_queue_type: str | None,
    exchange: str,
) -> None:
    set_env(monkeypatch, {"CONVEYOR_BROKER_URL": broker_url, "CONVEYOR_QUEUE_TYPE": queue_type})
    options = celery_config(load_settings())
    assert options["task_default_exchange"] == exchange
    # Building the app connects to nothing: its queues, made on demand, use that exchange.
    app = create_app(load_settings())
    assert app.amqp.queues["default"].exchange.name == exchange
    made = app.amqp.queues["other"]  # made on demand, as for `-Q other` or send_task(queue=)
    assert made.exchange.name == ("other" if exchange else "")
    # ...and of Conveyor's queue type: quorum, on a topic exchange (delayed delivery).
    quorum = default_queue_type == "quorum"
    assert made.queue_arguments == ({"x-queue-type": "quorum"} if quorum else None)
    assert (made.exchange.type == "topic") is quorum
    assert options.get("broker_transport_options") == transport_options
    assert options.get("task_default_queue_type") == default_queue_type


@pytest.mark.parametrize(
    ("broker_url", "queue_type", "queues", "quorum"),
    [
        ("amqp://h//", "quorum", None, True),
        ("amqp://h//", "classic", None, False),
        # a queue of CONVEYOR_QUEUES keeps its own type, and so does its .dead queue
        ("amqp://h//", "quorum", '{"jobs": {"type": "classic"}}', False),
        ("amqp://h//", "classic", '{"jobs": {"type": "quorum"}}', True),
        ("redis://h", "quorum", None, False),
    ],
)
def test_a_dead_letter_queue_is_of_its_queues_type(
    monkeypatch: pytest.MonkeyPatch,
    broker_url: str,
    queue_type: str,
    queues: str | None,
    quorum: bool,
) -> None:
    env = {"CONVEYOR_BROKER_URL": broker_url, "CONVEYOR_QUEUE_TYPE": queue_type}
    set_env(monkeypatch, {**env, **({"CONVEYOR_QUEUES": queues} if queues else {})})
    app = create_app(load_settings())
    dead = dead_letter_destination("jobs", quorum=dead_letters_quorum(app, "jobs"))
    assert dead.name == "jobs.dead"
    assert dead.as_dict()["queue_arguments"] == ({"x-queue-type": "quorum"} if quorum else None)


def test_declared_queues_are_read_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "CONVEYOR_QUEUES",
        '{"reports": {"prefetch": 1, "priority": true}, "fast": {"prefetch": 8}}',
    )
    settings = load_settings(broker_url="amqp://guest@127.0.0.1//")
    assert settings.queue("reports").prefetch == 1
    assert settings.queue("reports").priority is True
    assert settings.queue("fast").prefetch == 8
    assert settings.queue("undeclared").prefetch is None  # the defaults
    assert settings.queue_type_of("reports") is QueueType.CLASSIC


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ('{"q": {"prefetch": 0}}', "CONVEYOR_QUEUES.q.prefetch: Input should be greater than 0"),
        ('{"q": {"speed": 1}}', "CONVEYOR_QUEUES.q.speed: Extra inputs are not permitted"),
        ('{"q.dead": {}}', "'q.dead': .dead names dead letters"),
        ('{"q": {"type": "quorum", "priority": true}}', "quorum queue, which has no priorities"),
        ('["q"]', "CONVEYOR_QUEUES: Input should be a valid dictionary"),
    ],
)
def test_bad_queue_declarations_are_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, declared: str, message: str
) -> None:
    monkeypatch.setenv("CONVEYOR_QUEUES", declared)
    with pytest.raises(ConfigError) as caught:
        load_settings(broker_url="amqp://guest@127.0.0.1//")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_declared_queues_become_kombu_queues_with_their_arguments() -> None:
    queues = {
        "classic": {},
        "urgent": {"priority": True},
        "ledgered": {"type": "quorum"},
    }
    rabbitmq = {
        q.name: q
        for q in celery_config(load_settings(broker_url="amqp://guest@127.0.0.1//", queues=queues))[
            "task_queues"
        ]
    }
    assert rabbitmq["classic"].exchange.name == ""
    assert rabbitmq["classic"].queue_arguments is None
    assert rabbitmq["urgent"].queue_arguments == {"x-max-priority": 9}
    assert rabbitmq["ledgered"].queue_arguments == {"x-queue-type": "quorum"}
    assert (rabbitmq["ledgered"].exchange.name, rabbitmq["ledgered"].exchange.type) == (
        "ledgered",
        "topic",
    )
    redis = celery_config(load_settings(broker_url="redis://127.0.0.1/0", queues=queues))
    assert {q.queue_arguments for q in redis["task_queues"]} == {None}
    assert redis["broker_transport_options"]["priority_steps"] == list(range(10))
    assert "task_queues" not in celery_config(load_settings(broker_url="redis://127.0.0.1/0"))


@pytest.mark.parametrize(
    ("priority", "rabbitmq", "redis"),
    [(9, 9, 0), (5, 5, 4), (0, 0, 9), (None, None, 9)],
)
def test_one_priority_scale_is_mapped_onto_each_broker(
    priority: int | None, rabbitmq: int | None, redis: int
) -> None:
    """9 runs first everywhere; no priority is the lowest, as on RabbitMQ."""
    assert broker_priority(priority, BrokerKind.RABBITMQ) == rabbitmq
    assert broker_priority(priority, BrokerKind.REDIS) == redis


def test_a_worker_takes_the_smallest_prefetch_of_its_queues() -> None:
    settings = load_settings(
        broker_url="redis://127.0.0.1/0",
        prefetch_multiplier=2,
        queues={"fast": {"prefetch": 8}, "slow": {"prefetch": 1}},
    )
    assert worker_options(settings, ["fast"]) == {"worker_prefetch_multiplier": 8}
    assert worker_options(settings, ["fast", "slow"]) == {"worker_prefetch_multiplier": 1}
    assert worker_options(settings, ["other", "fast"]) == {"worker_prefetch_multiplier": 2}
