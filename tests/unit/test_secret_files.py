"""Secret settings read from files (``CONVEYOR_<NAME>_FILE``), as Docker and Kubernetes
mount them, and the text :func:`secret_values` gives the masking to hide.

Every test starts from an empty CONVEYOR_* environment in an empty working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor.config.errors import ConfigError
from conveyor.config.secret_files import secret_fields, secret_values
from conveyor.config.settings import Settings, load_settings

pytestmark = pytest.mark.unit

PLANTED = "Tr0ub4dor-and-3"
"""A secret value, with characters that URLs and shells treat specially left out."""
ENCODED = "p%40ss-w0rd"
"""A URL's password, percent-encoded: ``p@ss-w0rd``."""


@pytest.fixture(autouse=True)
def empty_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("CONVEYOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def secret_file(folder: Path, text: str, name: str = "secret") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_secret_setting_and_only_those_has_a_file_variable() -> None:
    fields = secret_fields(Settings)
    # Found, not listed: a SecretStr field added later gets its _FILE variable by itself.
    secret_str = {
        name
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }
    assert secret_str >= {
        "broker_url",
        "database_url",
        "database_replica_url",
        "sentry_dsn",
        "metrics_token",
        "flower_password",
        "broker_api_url",
    }
    assert set(fields) == secret_str | {"flower_user", "console_users"}
    assert not {"env", "default_queue", "log_level", "flower_port"} & set(fields)
    # CONVEYOR_X_FILE must mean "X, from a file": no setting of its own may be named so
    # (the TLS settings are paths named tls_*_file, with no tls_ca, tls_cert, tls_key beside).
    assert not {f"{name}_file" for name in fields} & set(Settings.model_fields)


# field, what the file holds, what the setting then reads as
FROM_FILES = [
    ("broker_url", f"amqp://conveyor:{PLANTED}@rabbit:5672//", "broker"),
    ("database_url", f"postgresql://conveyor:{PLANTED}@db/conveyor", "database_url"),
    (
        "database_replica_url",
        f"postgresql://ro:{PLANTED}@replica/conveyor",
        "database_replica_url",
    ),
    ("sentry_dsn", f"https://{PLANTED}@sentry.example/7", "sentry_dsn"),
    ("metrics_token", PLANTED, "metrics_token"),
    ("flower_user", "ops", "flower_user"),
    ("flower_password", PLANTED, "flower_password"),
    ("broker_api_url", f"http://conveyor:{PLANTED}@rabbit:15672/api/", "broker_api_url"),
]


@pytest.mark.parametrize(("field", "content", "attribute"), FROM_FILES)
def test_a_secret_setting_is_read_from_the_file_its_file_variable_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, field: str, content: str, attribute: str
) -> None:
    path = secret_file(tmp_path, content + "\n")
    monkeypatch.setenv(f"CONVEYOR_{field.upper()}_FILE", str(path))
    value = getattr(load_settings(), attribute)
    read = value if isinstance(value, str) else value.get_secret_value()
    assert read == content


def test_console_users_from_a_file_are_split_like_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    users = "ann:admin:scrypt$a,bob:viewer:scrypt$b"
    monkeypatch.setenv("CONVEYOR_CONSOLE_USERS_FILE", str(secret_file(tmp_path, users + "\n")))
    assert load_settings().console_users == ["ann:admin:scrypt$a", "bob:viewer:scrypt$b"]


@pytest.mark.parametrize(
    ("content", "read"),
    [
        (f"{PLANTED}\n", PLANTED),  # `echo pw > file`
        (f"{PLANTED}\r\n", PLANTED),  # written on Windows
        (f"{PLANTED}\n\n", PLANTED),
        (PLANTED, PLANTED),  # `kubectl create secret --from-literal`: no newline at all
        (f" {PLANTED} \n", f" {PLANTED} "),  # spaces may be part of a password
        ("line one\nline two\n", "line one\nline two"),
    ],
)
def test_trailing_line_breaks_are_stripped_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str, read: str
) -> None:
    monkeypatch.setenv("CONVEYOR_FLOWER_PASSWORD_FILE", str(secret_file(tmp_path, content)))
    password = load_settings().flower_password
    assert password is not None
    assert password.get_secret_value() == read


def test_the_value_and_its_file_both_set_is_an_error_naming_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONVEYOR_METRICS_TOKEN", "from-the-environment")
    monkeypatch.setenv("CONVEYOR_METRICS_TOKEN_FILE", str(secret_file(tmp_path, PLANTED)))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert "CONVEYOR_METRICS_TOKEN and CONVEYOR_METRICS_TOKEN_FILE are both set" in message
    assert PLANTED not in message
    assert "from-the-environment" not in message


def test_a_value_in_dotenv_and_a_file_in_the_environment_conflict_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, empty_environment: Path
) -> None:
    value = "from-dotenv"
    (empty_environment / ".env").write_text(f"CONVEYOR_FLOWER_PASSWORD={value}\n")
    monkeypatch.setenv("CONVEYOR_FLOWER_PASSWORD_FILE", str(secret_file(tmp_path, PLANTED)))
    with pytest.raises(
        ConfigError, match="CONVEYOR_FLOWER_PASSWORD and CONVEYOR_FLOWER_PASSWORD_FILE"
    ):
        load_settings()


def test_an_empty_value_beside_its_file_is_unset_and_the_file_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What `CONVEYOR_SENTRY_DSN: ${CONVEYOR_SENTRY_DSN:-}` in a compose file passes.
    dsn = f"https://{PLANTED}@sentry.example/7"
    monkeypatch.setenv("CONVEYOR_SENTRY_DSN", "")
    monkeypatch.setenv("CONVEYOR_SENTRY_DSN_FILE", str(secret_file(tmp_path, dsn)))
    read = load_settings().sentry_dsn
    assert read is not None
    assert read.get_secret_value() == dsn


def test_an_empty_file_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_METRICS_TOKEN", PLANTED)
    monkeypatch.setenv("CONVEYOR_METRICS_TOKEN_FILE", "")
    token = load_settings().metrics_token
    assert token is not None
    assert token.get_secret_value() == PLANTED


def test_a_file_variable_in_dotenv_is_read(
    tmp_path: Path, empty_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = secret_file(tmp_path, PLANTED + "\n", name="token")
    (empty_environment / ".env").write_text(f"CONVEYOR_METRICS_TOKEN_FILE={path}\n")
    token = load_settings().metrics_token
    assert token is not None
    assert token.get_secret_value() == PLANTED


def test_code_wins_over_a_file_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONVEYOR_FLOWER_USER_FILE", str(secret_file(tmp_path, "from-file")))
    assert load_settings(flower_user="from-code").flower_user == "from-code"


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda folder: folder / "missing", "cannot read {path}: No such file or directory"),
        (lambda folder: folder, "cannot read {path}: Is a directory"),
        (lambda folder: secret_file(folder, "\n"), "{path} is empty"),
        (lambda folder: secret_file(folder, ""), "{path} is empty"),
    ],
    ids=["missing", "a-directory", "only-a-newline", "empty"],
)
def test_a_file_that_gives_no_secret_is_an_error_naming_the_variable_and_the_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make: object, problem: str
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    monkeypatch.setenv("CONVEYOR_DATABASE_URL_FILE", str(path))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value) == "CONVEYOR_DATABASE_URL_FILE: " + problem.format(path=path)


def test_a_file_that_is_not_text_is_an_error_without_its_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "binary"
    path.write_bytes(b"\xff\xfe" + PLANTED.encode())
    monkeypatch.setenv("CONVEYOR_FLOWER_PASSWORD_FILE", str(path))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value) == f"CONVEYOR_FLOWER_PASSWORD_FILE: {path} is not UTF-8 text"


def test_a_value_from_a_file_is_checked_like_one_from_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = secret_file(tmp_path, f"ftp://u:{PLANTED}@h/\n")
    monkeypatch.setenv("CONVEYOR_BROKER_URL_FILE", str(path))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value).startswith("CONVEYOR_BROKER_URL: unsupported scheme 'ftp'")
    assert PLANTED not in str(raised.value)


# -- what the masking hides -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "hidden"),
    [
        # A URL: its password (as written and decoded) and the whole URL.
        (
            "BROKER_URL",
            f"amqp://conveyor:{ENCODED}@rabbit:5672//",
            {f"amqp://conveyor:{ENCODED}@rabbit:5672//", ENCODED, "p@ss-w0rd"},
        ),
        # kombu's failover list: each URL's password.
        (
            "BROKER_URL",
            "redis://:one-pass@a:6379/0;redis://:two-pass@b:6379/0",
            {"redis://:one-pass@a:6379/0;redis://:two-pass@b:6379/0", "one-pass", "two-pass"},
        ),
        # A Sentry DSN: its key, the user part of the URL.
        (
            "SENTRY_DSN",
            "https://abc123key@o1.ingest.example/7",
            {
                "https://abc123key@o1.ingest.example/7",
                "abc123key",
            },
        ),
        # libpq's parameters in the query string.
        (
            "DATABASE_URL",
            "postgresql://db/conveyor?user=app&password=in-query&sslpassword=key-pass",
            {
                "postgresql://db/conveyor?user=app&password=in-query&sslpassword=key-pass",
                "in-query",
                "key-pass",
            },
        ),
        # No credentials: nothing to hide, the address stays readable.
        ("DATABASE_URL", "postgresql://db:5432/conveyor", set()),
        ("METRICS_TOKEN", "a-metrics-token", {"a-metrics-token"}),
    ],
)
def test_secret_values_are_the_credentials_and_the_urls_that_carry_them(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, hidden: set[str]
) -> None:
    monkeypatch.setenv(f"CONVEYOR_{variable}", value)
    assert secret_values(load_settings()) == hidden


def test_names_are_not_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_FLOWER_USER", "ops-team")
    monkeypatch.setenv("CONVEYOR_FLOWER_PASSWORD", PLANTED)
    assert secret_values(load_settings()) == {PLANTED}
