"""TLS on the connections Conveyor opens: to the broker (RabbitMQ, Redis) and to the ledger
(PostgreSQL). docs/tls.md is the operator's side of this module.

Whether a connection uses TLS is said once per connection: by the broker URL's scheme
(``amqps://``, ``rediss://``), and for the ledger by ``CONVEYOR_DATABASE_TLS`` (a
PostgreSQL URL has no TLS scheme). What the settings add to a connection that uses it: the
CA bundle that verifies the server (``CONVEYOR_TLS_CA_FILE``; unset, the system's trusted
CAs) and a client certificate (``CONVEYOR_TLS_CERT_FILE`` with ``CONVEYOR_TLS_KEY_FILE``).

The server's certificate and its host name are always verified; nothing here can turn that
off. Two things in kombu make that take care, hence :func:`check`: given a ``rediss://``
URL and no options it connects without verifying anything (it logs a warning and uses
``CERT_NONE``), so :func:`broker_ssl` always gives options; and a broker URL's ``ssl_*``
parameters replace the options it is given, CA file and all, so such parameters are
refused at start (all but a redundant ``ssl_cert_reqs=required``).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

if TYPE_CHECKING:
    from conveyor.config.settings import Settings

TLS_BROKER_SCHEMES = ("amqps", "rediss")
DATABASE_TLS_PARAMETERS = ("sslmode", "sslrootcert", "sslcert", "sslkey")
"""libpq's parameters that ``CONVEYOR_DATABASE_TLS`` sets; a URL may not set them too."""
REQUIRED = ("required", "CERT_REQUIRED")
"""The values of kombu's ``ssl_cert_reqs`` URL parameter that keep verification on."""
FILES = ("tls_ca_file", "tls_cert_file", "tls_key_file")


def check_file(path: Path | None) -> Path | None:
    """``path`` when it names a file this process can read; raises ValueError otherwise
    (a field validator: the message gets the variable's name in front)."""
    if path is None:
        return None
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{path}: this process may not read it")
    return path


def check(settings: Settings) -> None:
    """Raise ValueError, naming the variables at fault, when the TLS settings cannot work
    together or with the URLs: a client certificate without its key (or the reverse),
    files that are not PEM, a broker URL that mixes TLS and plain schemes or carries
    ``ssl_*`` parameters, ``CONVEYOR_DATABASE_TLS`` without a PostgreSQL ledger or beside a
    URL that sets libpq's TLS parameters itself."""
    _check_certificates(settings)
    _check_broker(settings)
    if settings.database_tls:
        _check_database(settings)


def _check_certificates(settings: Settings) -> None:
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if (cert is None) != (key is None):
        raise ValueError(
            "CONVEYOR_TLS_CERT_FILE and CONVEYOR_TLS_KEY_FILE: set both (a client "
            "certificate and its private key) or neither"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # without the system's CAs: quicker
    if settings.tls_ca_file is not None:
        try:
            context.load_verify_locations(cafile=settings.tls_ca_file)
        except ssl.SSLError as exc:
            raise ValueError(
                f"CONVEYOR_TLS_CA_FILE: {settings.tls_ca_file} holds no PEM certificate ({exc})"
            ) from None
    if cert is not None and key is not None:
        try:
            # A password callback, so that an encrypted key fails here instead of OpenSSL
            # asking for its pass phrase on the terminal.
            context.load_cert_chain(cert, key, password=lambda: b"")
        except ssl.SSLError as exc:
            raise ValueError(
                f"CONVEYOR_TLS_CERT_FILE, CONVEYOR_TLS_KEY_FILE: {cert} and {key} are not a "
                f"PEM certificate and its unencrypted private key ({exc})"
            ) from None


def broker_urls(settings: Settings) -> list[str]:
    """The broker's URLs: one, or kombu's failover list (joined by ``;``)."""
    return [url.strip() for url in settings.broker.split(";") if url.strip()]


def _check_broker(settings: Settings) -> None:
    urls = broker_urls(settings)
    schemes = {urlsplit(url).scheme for url in urls}
    if schemes & set(TLS_BROKER_SCHEMES) and schemes - set(TLS_BROKER_SCHEMES):
        raise ValueError(
            f"CONVEYOR_BROKER_URL mixes TLS and plain URLs ({', '.join(sorted(schemes))}): "
            "kombu uses one TLS setting for all of them"
        )
    files = any(getattr(settings, name) is not None for name in FILES)
    for url in urls:
        for name, value in parse_qsl(urlsplit(url).query):
            if name != "ssl" and not name.startswith("ssl_"):
                continue
            if name == "ssl_cert_reqs" and value in REQUIRED and not files:
                continue  # what Conveyor asks for anyway
            raise ValueError(
                f"CONVEYOR_BROKER_URL: remove `{name}` from the URL and use "
                "CONVEYOR_TLS_CA_FILE, CONVEYOR_TLS_CERT_FILE and CONVEYOR_TLS_KEY_FILE: kombu "
                "lets a URL's ssl parameters replace those, and certificate verification "
                "stays on (docs/tls.md)"
            )


def _check_database(settings: Settings) -> None:
    primary = settings.database_url
    if primary is None or not primary.get_secret_value().startswith("postgresql"):
        raise ValueError(
            "CONVEYOR_DATABASE_TLS is for a PostgreSQL ledger: set CONVEYOR_DATABASE_URL "
            "to a postgresql:// URL, or CONVEYOR_DATABASE_TLS=false"
        )
    urls = {
        "CONVEYOR_DATABASE_URL": primary,
        "CONVEYOR_DATABASE_REPLICA_URL": settings.database_replica_url,
    }
    for variable, secret in urls.items():
        if secret is None:
            continue
        named = {name for name, _ in parse_qsl(urlsplit(secret.get_secret_value()).query)}
        clash = sorted(named & set(DATABASE_TLS_PARAMETERS))
        if clash:
            raise ValueError(
                f"{variable} sets {', '.join(clash)} itself, which CONVEYOR_DATABASE_TLS sets: "
                "remove them from the URL (or set CONVEYOR_DATABASE_TLS=false to keep the "
                "URL's own)"
            )


def broker_ssl(settings: Settings) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` for ``settings``: the TLS options of an ``amqps://`` or
    ``rediss://`` broker, None for any other (options given to a plain ``redis://`` or
    ``amqp://`` connection would make kombu speak TLS to it).

    RabbitMQ (py-amqp) checks the host name only when given one: with a single URL it is
    that URL's host; with a failover list, ``None`` asks kombu to fill in the host it
    connects to (it does so in the shared options, once: docs/tls.md). Redis (redis-py)
    checks each connection's own host.
    """
    urls = broker_urls(settings)
    scheme = urlsplit(urls[0]).scheme if urls else ""
    ca = _text(settings.tls_ca_file)
    cert, key = _text(settings.tls_cert_file), _text(settings.tls_key_file)
    if scheme == "rediss":
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
        given = {"ssl_ca_certs": ca, "ssl_certfile": cert, "ssl_keyfile": key}
    elif scheme == "amqps":
        host = urlsplit(urls[0]).hostname if len(urls) == 1 else None
        options = {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": host}
        given = {"ca_certs": ca, "certfile": cert, "keyfile": key}
    else:
        return None
    return options | {name: value for name, value in given.items() if value is not None}


def database_url(url: str, settings: Settings) -> str:
    """``url`` (SQLAlchemy's form) with libpq's TLS parameters when ``CONVEYOR_DATABASE_TLS``
    is on and it is a PostgreSQL URL: ``sslmode=verify-full`` (TLS only; the server's
    certificate and host name verified), the CA file or else ``sslrootcert=system`` (the
    system's trusted CAs), and the client certificate when there is one.

    In the URL rather than in ``connect_args``, so that every connection made from it gets
    them: the pool's, the direct ones of the job path, and migrations'.
    """
    if not settings.database_tls or not url.startswith("postgresql"):
        return url
    parameters = {"sslmode": "verify-full", "sslrootcert": _text(settings.tls_ca_file) or "system"}
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        parameters["sslcert"] = str(settings.tls_cert_file)
        parameters["sslkey"] = str(settings.tls_key_file)
    return url + ("&" if "?" in url else "?") + urlencode(parameters, safe="/")


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)
