"""Conveyor over TLS: a Redis broker, a PostgreSQL ledger and a RabbitMQ node of this
module's own that take TLS connections only, with a CA and certificates made for the run by
``openssl`` (tests/certificates.py).

Each instance refuses a plain-text connection. With ``CONVEYOR_TLS_CA_FILE`` a real worker
and a producer run a job through Redis and PostgreSQL. Without it (the system's CAs, which
never signed the test CA) the broker and ledger checks fail on the certificate instead of
going on unverified. With client certificates required (Redis), the configured one gets in
and a connection without one is turned away. The API, behind a proxy on loopback that
says ``X-Forwarded-Proto: https``, sends HSTS (docs/tls.md).

The RabbitMQ node takes 10-20 s to start, so its test is in the ``full`` tier; its twin in
the default run is tests/unit/test_tls_settings.py's check of the ``amqps://`` options.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import kombu.exceptions
import psycopg
import pytest
import redis
import sqlalchemy.exc
from kombu.connection import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry

from conveyor.config import load_settings
from conveyor.config.settings import Settings
from conveyor.worker.api.hygiene import HSTS
from conveyor.worker.app import create_app
from conveyor.worker.chaos.services import (
    RABBIT_BIN,
    PostgresInstance,
    RabbitInstance,
    free_port,
    wait_until,
)
from conveyor.worker.client import enqueue, get_job
from conveyor.worker.migrate import upgrade
from conveyor.worker.observability.probes import check_broker, check_ledger
from tests.certificates import Certificates, make_certificates
from tests.conftest import Processes, WorkerFactory, conveyor_env, terminal, wait_for
from tests.integration.test_api_harness import start_api

VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED|certificate verify failed"


class TlsRedis:
    """redis-server with its plain port off (``--port 0``): TLS on a free port, or nothing."""

    def __init__(self, folder: Path, certificates: Certificates, *, auth_clients: bool) -> None:
        self.folder = folder
        self.certificates = certificates
        self.auth_clients = auth_clients
        self.port = free_port()
        self.url = f"rediss://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        certificates = self.certificates
        self._process = subprocess.Popen(
            [
                *("redis-server", "--bind", "127.0.0.1", "--port", "0"),
                *("--tls-port", str(self.port)),
                *("--tls-cert-file", str(certificates.server_cert)),
                *("--tls-key-file", str(certificates.server_key)),
                *("--tls-ca-cert-file", str(certificates.ca)),
                *("--tls-auth-clients", "yes" if self.auth_clients else "no"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.folder)),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(certificates.ca),
            ssl_certfile=str(certificates.client_cert),
            ssl_keyfile=str(certificates.client_key),
            socket_timeout=2,
        )
        try:
            wait_until(client.ping, timeout_s=20, what="redis over TLS")
        finally:
            client.close()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(20)


class TlsRabbit(RabbitInstance):
    """A RabbitMQ node whose only AMQP listener is TLS (``listeners.tcp = none``)."""

    def __init__(self, directory: Path, certificates: Certificates) -> None:
        super().__init__(directory)
        self.certificates = certificates
        self.url = f"amqps://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        env = super()._env()
        del env["RABBITMQ_NODE_PORT"], env["RABBITMQ_NODE_IP_ADDRESS"]  # in rabbitmq.conf
        return env

    def start(self) -> None:
        (self.directory / "log").mkdir(parents=True)
        (self.directory / "enabled_plugins").write_text("[].\n")
        key = self.directory / "server.key"
        shutil.copy(self.certificates.server_key, key)
        (self.directory / "rabbitmq.conf").write_text(
            "loopback_users = none\n"
            "listeners.tcp = none\n"
            f"listeners.ssl.default = 127.0.0.1:{self.port}\n"
            f"ssl_options.cacertfile = {self.certificates.ca}\n"
            f"ssl_options.certfile = {self.certificates.server_cert}\n"
            f"ssl_options.keyfile = {key}\n"
            "ssl_options.verify = verify_none\n"  # no client certificate asked for
        )
        if os.geteuid() == 0:  # the node runs as the rabbitmq user
            for path in [self.directory, *self.directory.rglob("*")]:
                shutil.chown(path, "rabbitmq", "rabbitmq")
        self._run(f"{RABBIT_BIN}/rabbitmq-server", "-detached")
        ctl = f"{RABBIT_BIN}/rabbitmqctl"
        wait_until(
            lambda: self._run(
                ctl, "-n", self.node, "await_startup", "--timeout", "60", check=False
            ),
            timeout_s=120,
            what="rabbitmq over TLS",
        )


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    # Not under tmp_path: pytest's base folder is root's alone (0700), and PostgreSQL runs
    # as the postgres user, who must reach its data folder and its certificate.
    made = Path(tempfile.mkdtemp(prefix="conveyor-tls-"))
    made.chmod(0o755)
    yield made
    shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(scope="module")
def certificates(folder: Path) -> Certificates:
    return make_certificates(folder)


@pytest.fixture(scope="module")
def tls_redis(folder: Path, certificates: Certificates) -> Iterator[TlsRedis]:
    instance = TlsRedis(folder / "redis", certificates, auth_clients=False)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def tls_rabbit(folder: Path, certificates: Certificates) -> Iterator[TlsRabbit]:
    instance = TlsRabbit(folder / "rabbitmq", certificates)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


CLIENT_ROLE = "conveyor"
"""The PostgreSQL role that must show a client certificate (its CN, checked by the server)."""


@pytest.fixture(scope="module")
def tls_postgres(folder: Path, certificates: Certificates) -> Iterator[PostgresInstance]:
    """A cluster whose only TCP entries are ``hostssl``: a plain-text client finds none.
    :data:`CLIENT_ROLE` gets in only with a client certificate the CA signed for it."""
    key = folder / "postgres-server.key"
    shutil.copy(certificates.server_key, key)
    if os.geteuid() == 0:
        shutil.chown(key, "postgres", "postgres")  # the server's key must be its own
    instance = PostgresInstance(
        folder / "postgres",
        settings={
            "ssl": "on",
            "ssl_cert_file": str(certificates.server_cert),
            "ssl_key_file": str(key),
            "ssl_ca_file": str(certificates.ca),  # to verify client certificates
        },
    )
    instance.init()
    (instance.data / "pg_hba.conf").write_text(
        "local all all trust\n"
        f"hostssl all {CLIENT_ROLE} 127.0.0.1/32 trust clientcert=verify-full\n"
        "hostssl all all 127.0.0.1/32 trust\n"
    )
    try:
        instance.start()  # its own readiness check connects with libpq's sslmode=prefer
        with psycopg.connect(instance.url, autocommit=True) as connection:
            connection.execute(f"CREATE ROLE {CLIENT_ROLE} LOGIN SUPERUSER")
        yield instance
    finally:
        instance.stop()


def tls_settings(
    broker_url: str, tls_postgres: PostgresInstance, data_dir: Path, **overrides: object
) -> Settings:
    given = {"database_url": tls_postgres.url, **overrides}
    return load_settings(
        broker_url=broker_url, database_tls=True, data_dir=data_dir / "var", **given
    )


@pytest.fixture(scope="module")
def migrated(tls_postgres: PostgresInstance, certificates: Certificates) -> None:
    """The ledger's schema, migrated over TLS (the migrations take the settings' URL too)."""
    settings = load_settings(
        database_url=tls_postgres.url, database_tls=True, tls_ca_file=certificates.ca
    )
    upgrade(settings.database)


@pytest.mark.integration
def test_redis_and_postgresql_refuse_plain_text(
    tls_redis: TlsRedis, tls_postgres: PostgresInstance
) -> None:
    plain = redis.Redis(port=tls_redis.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(tls_postgres.url + "?sslmode=disable", connect_timeout=5)


@pytest.mark.integration
@pytest.mark.usefixtures("migrated")
def test_a_job_runs_over_tls_to_redis_and_postgresql(
    tls_redis: TlsRedis,
    tls_postgres: PostgresInstance,
    certificates: Certificates,
    tmp_path: Path,
    start_worker: WorkerFactory,
) -> None:
    queue = f"test-tls-{uuid.uuid4().hex[:10]}"
    tls = {"database_tls": "true", "tls_ca_file": str(certificates.ca)}
    start_worker(conveyor_env(tls_redis.url, tls_postgres.url, tmp_path, **tls), queue)
    app = create_app(
        tls_settings(tls_redis.url, tls_postgres, tmp_path, tls_ca_file=certificates.ca)
    )
    try:
        job_id = enqueue("demo.work", {"n": 6}, queue=queue, app=app)
        assert wait_for(lambda: terminal(app, job_id), timeout_s=60) == "succeeded"
        assert get_job(job_id, app=app).result == {"n": 6, "square": 36, "attempt": 1}
    finally:
        app.ledger.dispose()
        app.close()
    # The server's own view: every client connection it holds (the worker's) is TLS.
    with psycopg.connect(
        tls_postgres.url, sslmode="verify-full", sslrootcert=str(certificates.ca)
    ) as connection:
        row = connection.execute(
            "SELECT count(*), count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_ssl s "
            "JOIN pg_stat_activity a USING (pid) WHERE a.client_addr IS NOT NULL"
        ).fetchone()
    assert row is not None
    clients, plain = row
    assert clients >= 2  # this one and the worker's
    assert plain == 0


@pytest.mark.integration
@pytest.mark.usefixtures("migrated")
def test_without_the_ca_the_broker_and_the_ledger_fail_on_the_certificate(
    tls_redis: TlsRedis, tls_postgres: PostgresInstance, tmp_path: Path
) -> None:
    """The system's CAs never signed the test CA: verification fails, nothing goes on."""
    app = create_app(tls_settings(tls_redis.url, tls_postgres, tmp_path))
    try:
        with pytest.raises(kombu.exceptions.OperationalError, match=VERIFY_FAILED):
            check_broker(app)
        with pytest.raises(sqlalchemy.exc.OperationalError, match=VERIFY_FAILED):
            check_ledger(app)
    finally:
        app.ledger.dispose()
        app.close()


@pytest.mark.full
def test_rabbitmq_over_tls_verifies_against_the_ca_and_refuses_plain_amqp(
    tls_rabbit: TlsRabbit, certificates: Certificates
) -> None:
    """The amqps:// options (py-amqp's): the handshake, host name and login succeed with the
    CA, fail on the certificate without it; the node has no plain-text listener at all."""
    trusting = create_app(load_settings(broker_url=tls_rabbit.url, tls_ca_file=certificates.ca))
    unknown = create_app(load_settings(broker_url=tls_rabbit.url))
    try:
        check_broker(trusting)
        with pytest.raises(kombu.exceptions.OperationalError, match=VERIFY_FAILED):
            check_broker(unknown)
    finally:
        trusting.close()
        unknown.close()
    plain = tls_rabbit.url.replace("amqps://", "amqp://")
    with (
        Connection(plain, connect_timeout=5) as connection,
        pytest.raises(kombu.exceptions.OperationalError),
    ):
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)


@pytest.mark.integration
@pytest.mark.usefixtures("migrated")
def test_where_client_certificates_are_required_the_configured_one_gets_in(
    folder: Path, certificates: Certificates, tls_postgres: PostgresInstance, tmp_path: Path
) -> None:
    """A Redis of the test's own that requires client certificates, and the ledger's role
    that does (``clientcert=verify-full``: the certificate's CN is the role's name)."""
    strict = TlsRedis(folder / f"redis-{uuid.uuid4().hex[:6]}", certificates, auth_clients=True)
    strict.start()
    ledger = tls_postgres.url.replace("postgres@", f"{CLIENT_ROLE}@")
    trust = {"database_url": ledger, "tls_ca_file": certificates.ca}
    without = create_app(tls_settings(strict.url, tls_postgres, tmp_path, **trust))
    client = {"tls_cert_file": certificates.client_cert, "tls_key_file": certificates.client_key}
    with_cert = create_app(tls_settings(strict.url, tls_postgres, tmp_path, **trust, **client))
    try:
        check_broker(with_cert)
        check_ledger(with_cert)
        # Redis ends the handshake ("EOF occurred in violation of protocol").
        with pytest.raises(kombu.exceptions.OperationalError):
            check_broker(without)
        with pytest.raises(sqlalchemy.exc.OperationalError, match="certificate"):
            check_ledger(without)
    finally:
        for app in (without, with_cert):
            app.ledger.dispose()
            app.close()
        strict.stop()


@pytest.mark.integration
@pytest.mark.usefixtures("migrated")
def test_the_api_sends_hsts_when_its_loopback_proxy_says_https(
    tls_redis: TlsRedis,
    tls_postgres: PostgresInstance,
    certificates: Certificates,
    tmp_path: Path,
    processes: Processes,
) -> None:
    """What docs/tls.md's proxy examples rely on: `conveyor api` (uvicorn) believes
    ``X-Forwarded-Proto`` from 127.0.0.1, and the API then answers as over TLS."""
    tls = {"database_tls": "true", "tls_ca_file": str(certificates.ca)}
    api = start_api(processes, conveyor_env(tls_redis.url, tls_postgres.url, tmp_path, **tls))
    behind_tls = httpx.get(f"{api.base_url}/healthz", headers={"X-Forwarded-Proto": "https"})
    plain = httpx.get(f"{api.base_url}/healthz")
    assert behind_tls.status_code == plain.status_code == 200
    assert behind_tls.headers.get("Strict-Transport-Security") == HSTS
    assert "Strict-Transport-Security" not in plain.headers
