"""The TLS settings and what they become: Celery's ``broker_use_ssl`` (what kombu hands
py-amqp or redis-py), libpq's parameters in the ledger's URL, and the refusals at start.

No server is involved: the certificates are files made with ``openssl``, and the options
are read back from Celery's configuration, kombu's connection object and SQLAlchemy's
connect arguments, none of which connects.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from conveyor.config import celery_config, load_settings
from conveyor.config.settings import Settings
from conveyor.worker.app import create_app
from conveyor.worker.errors import ConfigError
from tests.certificates import Certificates, make_certificates, openssl

pytestmark = pytest.mark.unit

PG = "postgresql://conveyor@db.example:5432/ledger"


@pytest.fixture(scope="module")
def certificates() -> Iterator[Certificates]:
    with tempfile.TemporaryDirectory(prefix="conveyor-tls-unit-") as folder:
        yield make_certificates(Path(folder))


@pytest.fixture(autouse=True)
def empty_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CONVEYOR_* variable set, and a working directory without a ``.env``."""
    for name in list(os.environ):
        if name.startswith("CONVEYOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def files(certificates: Certificates, *, client: bool = True) -> dict[str, Path]:
    given = {"tls_ca_file": certificates.ca}
    if client:
        given |= {
            "tls_cert_file": certificates.client_cert,
            "tls_key_file": certificates.client_key,
        }
    return given


def use_ssl(settings: Settings) -> dict[str, Any] | None:
    options: dict[str, Any] | None = celery_config(settings).get("broker_use_ssl")
    return options


# --- the broker -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "amqp://guest:guest@127.0.0.1:5672//",
        "pyamqp://guest@127.0.0.1//",
        "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380",
        None,  # the embedded broker
    ],
)
def test_a_plain_broker_gets_no_tls_options_even_with_the_files_set(
    url: str | None, certificates: Certificates
) -> None:
    """Options on a plain URL would make kombu speak TLS to a plain-text port."""
    extra = {"redis_sentinel_master": "primary"} if url and url.startswith("sentinel") else {}
    settings = load_settings(broker_url=url, **files(certificates), **extra)
    assert use_ssl(settings) is None


def test_rediss_verifies_against_the_system_cas_when_no_file_is_set() -> None:
    """kombu's own default for rediss:// without options is CERT_NONE: Conveyor never leaves
    it at that."""
    settings = load_settings(broker_url="rediss://:pw@redis.example:6380/0")
    assert use_ssl(settings) == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}


def test_rediss_takes_the_ca_and_the_client_certificate(certificates: Certificates) -> None:
    settings = load_settings(broker_url="rediss://redis.example:6380/0", **files(certificates))
    assert use_ssl(settings) == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(certificates.ca),
        "ssl_certfile": str(certificates.client_cert),
        "ssl_keyfile": str(certificates.client_key),
    }


@pytest.mark.parametrize(
    ("url", "server_hostname"),
    [
        ("amqps://u:p@rabbit.example:5671/vhost", "rabbit.example"),
        ("amqps://u:p@localhost//", "localhost"),  # kombu would check 127.0.0.1 instead
        ("amqps://u:p@r1.example//;amqps://u:p@r2.example//", None),  # kombu fills it in
    ],
)
def test_amqps_verifies_the_certificate_and_the_host_name(
    url: str, server_hostname: str | None, certificates: Certificates
) -> None:
    settings = load_settings(broker_url=url, **files(certificates, client=False))
    assert use_ssl(settings) == {
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": server_hostname,
        "ca_certs": str(certificates.ca),
    }


def test_amqps_takes_the_client_certificate(certificates: Certificates) -> None:
    settings = load_settings(broker_url="amqps://rabbit.example//", **files(certificates))
    options = use_ssl(settings)
    assert options is not None
    assert (options["certfile"], options["keyfile"]) == (
        str(certificates.client_cert),
        str(certificates.client_key),
    )


def test_kombus_connection_gets_the_options_celery_was_given(certificates: Certificates) -> None:
    """What a worker's and a producer's connections carry (none is opened here)."""
    settings = load_settings(broker_url="rediss://redis.example:6380/0", **files(certificates))
    app = create_app(settings)
    try:
        with app.connection_for_write() as connection:
            assert connection.ssl == use_ssl(settings)
            assert connection.ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    finally:
        app.close()


# --- the ledger -----------------------------------------------------------------------------


def connect_args(url: str) -> dict[str, Any]:
    """What SQLAlchemy's psycopg dialect hands ``psycopg.connect`` for ``url``."""
    engine = create_engine(url)
    arguments = dict(engine.dialect.create_connect_args(engine.url)[1])
    arguments.pop("context", None)
    return arguments


def test_database_tls_off_leaves_the_urls_alone(certificates: Certificates) -> None:
    settings = load_settings(database_url=PG, database_replica_url=PG, **files(certificates))
    assert settings.database == "postgresql+psycopg://conveyor@db.example:5432/ledger"
    assert settings.database_replica == settings.database


@pytest.mark.parametrize("client", [False, True], ids=["ca-only", "with-client-certificate"])
def test_database_tls_verifies_the_server_against_the_ca(
    client: bool, certificates: Certificates
) -> None:
    settings = load_settings(
        database_url=PG,
        database_replica_url=PG.replace("db.", "replica."),
        database_tls=True,
        **files(certificates, client=client),
    )
    expected = {"sslmode": "verify-full", "sslrootcert": str(certificates.ca)}
    if client:
        expected |= {"sslcert": str(certificates.client_cert)}
        expected |= {"sslkey": str(certificates.client_key)}
    for url, host in ((settings.database, "db.example"), (settings.database_replica, "replica.")):
        assert url is not None
        arguments = connect_args(url)
        assert {name: arguments[name] for name in arguments if name.startswith("ssl")} == expected
        assert str(arguments["host"]).startswith(host)


def test_database_tls_without_a_ca_file_uses_the_systems_cas() -> None:
    settings = load_settings(database_url=PG, database_tls=True)
    arguments = connect_args(settings.database)
    assert (arguments["sslmode"], arguments["sslrootcert"]) == ("verify-full", "system")


def test_database_tls_keeps_the_hosts_of_a_multi_host_url(certificates: Certificates) -> None:
    url = "postgresql://u@h1:5432,h2:5433/ledger?target_session_attrs=read-write"
    settings = load_settings(database_url=url, database_tls=True, **files(certificates))
    arguments = connect_args(settings.database)
    assert (arguments["host"], arguments["port"]) == ("h1,h2", "5432,5433")
    assert arguments["target_session_attrs"] == "read-write"
    assert arguments["sslmode"] == "verify-full"


# --- refusals at start ----------------------------------------------------------------------


def test_a_file_that_does_not_exist_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    monkeypatch.setenv("CONVEYOR_TLS_CA_FILE", str(missing))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value) == f"CONVEYOR_TLS_CA_FILE: {missing}: no such file"


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`CONVEYOR_TLS_CA_FILE=${CA:-}` in a compose file passes an empty string."""
    for name in ("CONVEYOR_TLS_CA_FILE", "CONVEYOR_TLS_CERT_FILE", "CONVEYOR_TLS_KEY_FILE"):
        monkeypatch.setenv(name, "")
    settings = load_settings()
    assert (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file) == (None,) * 3


def refusal(**overrides: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        load_settings(**overrides)
    return str(raised.value)


def test_a_client_certificate_needs_its_key_and_the_reverse(certificates: Certificates) -> None:
    for half in (
        {"tls_cert_file": certificates.client_cert},
        {"tls_key_file": certificates.client_key},
    ):
        assert refusal(**half).startswith("CONVEYOR_TLS_CERT_FILE and CONVEYOR_TLS_KEY_FILE:")


def test_files_that_are_not_what_they_say_are_refused(certificates: Certificates) -> None:
    assert refusal(tls_ca_file=certificates.client_key).startswith(
        "CONVEYOR_TLS_CA_FILE: "
    )  # a key, not a certificate
    mismatched = {
        "tls_cert_file": certificates.client_cert,
        "tls_key_file": certificates.server_key,
    }
    assert refusal(**mismatched).startswith("CONVEYOR_TLS_CERT_FILE, CONVEYOR_TLS_KEY_FILE: ")


def test_an_encrypted_key_is_refused_without_asking_for_its_pass_phrase(
    certificates: Certificates, tmp_path: Path
) -> None:
    """Nothing could type the pass phrase in a worker: OpenSSL must not wait for one."""
    encrypted = tmp_path / "encrypted.key"
    openssl(
        *("pkey", "-in", str(certificates.client_key), "-aes256"),
        *("-passout", "pass:secret", "-out", str(encrypted)),
        cwd=tmp_path,
    )
    assert encrypted.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    pair = {"tls_cert_file": certificates.client_cert, "tls_key_file": encrypted}
    message = refusal(**pair)
    assert message.startswith("CONVEYOR_TLS_CERT_FILE, CONVEYOR_TLS_KEY_FILE: ")
    assert "unencrypted private key" in message


@pytest.mark.parametrize(
    "query",
    [
        "ssl_cert_reqs=none",
        "ssl_cert_reqs=CERT_OPTIONAL",
        "ssl_check_hostname=false",
        "ssl_ca_certs=/etc/ssl/other.pem",
    ],
)
def test_broker_url_ssl_parameters_that_would_replace_the_settings_are_refused(
    query: str,
) -> None:
    """kombu lets them replace ``broker_use_ssl`` whole: verification would be off, or the
    CA file dropped."""
    message = refusal(broker_url=f"rediss://redis.example:6380/0?{query}")
    assert message.startswith(f"CONVEYOR_BROKER_URL: remove `{query.split('=')[0]}` from the URL")


def test_a_redundant_ssl_cert_reqs_required_is_accepted_only_without_files(
    certificates: Certificates,
) -> None:
    url = "rediss://redis.example:6380/0?ssl_cert_reqs=required"
    assert use_ssl(load_settings(broker_url=url)) is not None
    assert refusal(broker_url=url, **files(certificates)).startswith("CONVEYOR_BROKER_URL: ")


def test_a_failover_list_mixing_tls_and_plain_is_refused() -> None:
    message = refusal(broker_url="amqps://r1.example//;amqp://r2.example//")
    assert message.startswith("CONVEYOR_BROKER_URL mixes TLS and plain URLs")


@pytest.mark.parametrize(
    ("overrides", "start"),
    [
        ({}, "CONVEYOR_DATABASE_TLS is for a PostgreSQL ledger"),
        ({"database_url": "sqlite:////tmp/ledger.sqlite"}, "CONVEYOR_DATABASE_TLS is for"),
        ({"database_url": PG + "?sslmode=require"}, "CONVEYOR_DATABASE_URL sets sslmode"),
        (
            {"database_url": PG, "database_replica_url": PG + "?sslrootcert=/x.pem"},
            "CONVEYOR_DATABASE_REPLICA_URL sets sslrootcert",
        ),
    ],
)
def test_database_tls_refuses_what_it_cannot_apply(overrides: dict[str, str], start: str) -> None:
    assert refusal(database_tls=True, **overrides).startswith(start)


def test_without_database_tls_the_urls_own_sslmode_is_kept() -> None:
    settings = load_settings(database_url=PG + "?sslmode=verify-ca&sslrootcert=/etc/ca.pem")
    assert connect_args(settings.database)["sslmode"] == "verify-ca"
