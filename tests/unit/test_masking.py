"""Masking: configured secrets and URL passwords replaced by ``***`` in logs, recorded
failures, Sentry events, CLI errors and crash tracebacks.

The process's masker (``masking.SECRETS``) only ever learns secrets; each test plants
random ones of its own, so what another test taught it changes nothing here.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
from collections.abc import Iterator
from typing import Any, cast

import pytest

from conveyor.config.settings import LogFormat, load_settings
from conveyor.worker.cli.common import fail
from conveyor.worker.errors import failure_of
from conveyor.worker.observability import masking
from conveyor.worker.observability.logs import configure_logging
from conveyor.worker.observability.masking import MASK, Masker, protect
from conveyor.worker.observability.sentry import REDACTED_HINT, before_send

pytestmark = pytest.mark.unit


def planted() -> str:
    return secrets.token_hex(16)


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    """A random broker password this process's settings carry, protected."""
    value = planted()
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)  # protect() replaces it
    protect(load_settings(broker_url=f"amqp://app:{value}@rabbit:5672//"))
    return value


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("failed: SECRET", "failed: ***"),
        ("SECRETSECRET and xSECRETx", "****** and x***x"),  # anywhere, not only as a word
        ("ValueError('it is \\'SECRET\\'')", "ValueError('it is \\'***\\'')"),
    ],
)
def test_a_long_secret_is_masked_wherever_it_appears(text: str, masked: str) -> None:
    value = planted()
    assert Masker([value])(text.replace("SECRET", value)) == masked


def test_escaped_forms_are_masked_too() -> None:
    value = f"{planted()}\"'\\"
    mask = Masker([value])
    assert mask(repr(value)) == f"'{MASK}'"
    assert mask(json.dumps({"k": value})) == f'{{"k": "{MASK}"}}'


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # Any URL's password, configured or not, whatever its length; the user stays.
        (
            "for url 'http://ops:{pw}@rabbit:15672/api/'",
            "for url 'http://ops:***@rabbit:15672/api/'",
        ),
        ("redis://:{pw}@127.0.0.1:6379/0 down", "redis://:***@127.0.0.1:6379/0 down"),
        ("amqp://guest:**@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),  # kombu's
        # libpq's conninfo and query strings.
        ("host=db password={pw} user=app", "host=db password=*** user=app"),
        ("host=db password='{pw} x' user=app", "host=db password=*** user=app"),
        ("?user=app&sslpassword={pw}&x=1", "?user=app&sslpassword=***&x=1"),
        # Nothing to hide.
        ("http://rabbit:15672/api/ and a@b.example", "http://rabbit:15672/api/ and a@b.example"),
    ],
)
def test_url_passwords_and_password_parameters_are_masked_in_any_text(
    text: str, masked: str
) -> None:
    assert Masker()(text.format(pw="hunter2")) == masked


def test_a_short_secret_is_masked_only_where_it_is_a_password() -> None:
    # Masked anywhere, "postgres" would also cut "postgresql" out of every line.
    word = "postgres"
    mask = Masker([word])
    assert mask(f"postgresql://postgres:{word}@db/x") == "postgresql://postgres:***@db/x"
    assert mask("the postgresql ledger") == "the postgresql ledger"


def test_every_string_of_a_structure_is_masked_and_keys_are_kept() -> None:
    value = planted()
    event = {"a": [value, {"b": (f"x{value}", 3)}], value: None, "n": 1.5}
    assert Masker([value]).walk(event) == {"a": [MASK, {"b": ("x***", 3)}], value: None, "n": 1.5}


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("fmt", list(LogFormat))
def test_log_lines_mask_secrets_in_messages_fields_and_tracebacks(
    secret: str, root_logging: None, capsys: pytest.CaptureFixture[str], fmt: LogFormat
) -> None:
    configure_logging("INFO", fmt)
    log = logging.getLogger("conveyor.test")
    url = f"http://ops:{planted()}@rabbit:15672/api/"  # not configured: a URL's password
    log.warning("broker.down %s", f"amqp://app:{secret}@rabbit", extra={"error": f"for {url}"})
    try:
        raise ConnectionError(f"lost {secret}")
    except ConnectionError:
        log.exception("broker.lost")
    err = capsys.readouterr().err
    assert secret not in err
    assert url not in err
    assert "broker.down" in err
    assert "ConnectionError: lost ***" in err  # the traceback is there, masked
    if fmt is LogFormat.JSON:
        first = json.loads(err.splitlines()[0])
        assert first["event"] == "broker.down amqp://app:***@rabbit"
        assert first["error"] == "for http://ops:***@rabbit:15672/api/"


def test_a_recorded_failure_has_its_message_and_traceback_masked(secret: str) -> None:
    try:
        raise ConnectionError(f"cannot connect to amqp://app:{secret}@rabbit:5672//")
    except ConnectionError as exc:
        failure = failure_of(exc)
    assert failure.message == "cannot connect to ***"  # the configured URL, as a whole
    assert failure.traceback is not None
    assert secret not in failure.traceback
    assert "ConnectionError: cannot connect to ***" in failure.traceback


def test_sentry_events_are_masked_after_scrubbing(secret: str) -> None:
    event: dict[str, Any] = {
        "exception": {"values": [{"type": "ConnectionError", "value": f"lost {secret}"}]},
        "tags": {"task": "no.such.task", "detail": f"x {secret}"},
        "extra": {"note": [f"amqp://app:{secret}@rabbit"]},
        "message": f"password={secret}",
    }
    sent = before_send(cast(Any, event), {REDACTED_HINT: True})
    assert sent is not None
    assert secret not in json.dumps(sent)
    assert sent["exception"]["values"][0]["value"] == "lost ***"
    assert sent["extra"] == {"note": ["amqp://app:***@rabbit"]}


def test_a_cli_error_line_is_masked(secret: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        fail(f"cannot reach the broker: amqp://app:{secret}@rabbit")
    assert exited.value.code == 1
    assert (
        capsys.readouterr().err
        == "conveyor: error: cannot reach the broker: amqp://app:***@rabbit\n"
    )


def test_protect_masks_an_uncaught_exceptions_traceback(
    secret: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sys.excepthook is masking._masked_excepthook
    try:
        raise RuntimeError(f"crashed with {secret}")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.endswith("RuntimeError: crashed with ***\n")
