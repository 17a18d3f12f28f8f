"""The ledger's URLs: libpq's multi-host form and the read replica."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from conveyor.config import ConfigError, load_settings
from conveyor.config.settings import sqlalchemy_url

pytestmark = pytest.mark.unit

MULTI = "postgresql://postgres@127.0.0.1:5433,127.0.0.1:5434/db?target_session_attrs=read-write"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///var/ledger.sqlite", "sqlite:///var/ledger.sqlite"),
        (
            MULTI,
            "postgresql+psycopg://postgres@/db?host=127.0.0.1:5433&host=127.0.0.1:5434"
            "&target_session_attrs=read-write",
        ),
        ("postgresql://a:5432,b:5433/db", "postgresql+psycopg:///db?host=a:5432&host=b:5433"),
    ],
)
def test_sqlalchemy_url(url: str, expected: str) -> None:
    assert sqlalchemy_url(url) == expected


def test_multi_host_url_reaches_psycopg_as_host_and_port_lists() -> None:
    url = make_url(load_settings(database_url=MULTI).database)
    args = url.get_dialect()().create_connect_args(url)[1]
    assert (args["host"], args["port"]) == ("127.0.0.1,127.0.0.1", "5433,5434")
    assert args["target_session_attrs"] == "read-write"


def test_replica_defaults_to_none() -> None:
    assert load_settings(database_url=MULTI).database_replica is None


def test_replica_is_pinned_to_psycopg() -> None:
    settings = load_settings(database_replica_url="postgresql://u@replica:5432/db")
    assert settings.database_replica == "postgresql+psycopg://u@replica:5432/db"


def test_replica_is_validated_like_the_primary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_REPLICA_URL", "mysql://u@h/db")
    with pytest.raises(ConfigError, match="CONVEYOR_DATABASE_REPLICA_URL"):
        load_settings()
