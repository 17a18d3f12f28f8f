"""Database and broker URLs: checking their schemes, and the form SQLAlchemy needs.

Kept apart from :mod:`config.settings` (which re-exports :func:`sqlalchemy_url`), so that
tools that only turn a URL around need not read the settings object.
"""

from __future__ import annotations

from urllib.parse import urlsplit

BROKER_SCHEMES = (
    "redis",
    "rediss",
    "sentinel",
    "amqp",
    "amqps",
    "pyamqp",
    "sqla+sqlite",
    "sqla+postgresql",
)
DATABASE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")


def sqlalchemy_url(url: str) -> str:
    """``url`` for SQLAlchemy: PostgreSQL pinned to the psycopg 3 driver, and libpq's
    multi-host netloc (``h1:p1,h2:p2``), which SQLAlchemy cannot parse, rewritten as its
    ``?host=h1:p1&host=h2:p2`` form; psycopg hands libpq the same list either way."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    parts = urlsplit(url)
    credentials, _, hosts = parts.netloc.rpartition("@")
    if not parts.scheme.startswith("postgresql") or "," not in hosts:
        return url
    query = "&".join([*(f"host={host}" for host in hosts.split(",")), *filter(None, [parts.query])])
    netloc = f"{credentials}@" if credentials else ""
    # Built by hand: urlunsplit drops the "//" of an empty netloc.
    return f"{parts.scheme}://{netloc}{parts.path}?{query}"


def check_scheme(url: str, allowed: tuple[str, ...], *, need_host: bool) -> None:
    """Raise ValueError unless ``url``'s scheme is one of ``allowed`` (and, with
    ``need_host``, it names a host; the embedded ``sqla+`` broker needs none)."""
    parts = urlsplit(url)
    if parts.scheme not in allowed:
        raise ValueError(
            f"unsupported scheme {parts.scheme or '(none)'!r}; expected one of {', '.join(allowed)}"
        )
    if need_host and not parts.scheme.startswith("sqla") and not parts.hostname:
        raise ValueError("the URL names no host")
