"""Secret settings read from files, and the text of the secrets that must never be shown.

Docker and Kubernetes hand secrets to a container as files (``/run/secrets/NAME``, a
mounted Secret volume), systemd as credentials (``$CREDENTIALS_DIRECTORY/NAME``). For
every secret setting ``x``, ``CONVEYOR_X_FILE=/path`` reads its value from that file,
trailing line breaks stripped::

    CONVEYOR_DATABASE_URL_FILE=/run/secrets/database_url

The secret settings are every ``SecretStr`` field of the settings object (found, not
listed, so that a new secret field gets its ``_FILE`` variable too) and
:data:`ALSO_FROM_FILES`. Each is given one way: ``CONVEYOR_X`` and ``CONVEYOR_X_FILE``
both set is a :class:`ConfigError` naming both (an empty ``CONVEYOR_X``, which
``X: ${X:-}`` in a compose file passes, counts as unset). A missing, unreadable or empty
file is a :class:`ConfigError` naming the variable and the path, never the content.

:func:`secret_values` lists what the masking of logs, error messages and Sentry events
(:mod:`worker.observability.masking`) replaces by ``***``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, get_args
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource

from conveyor.config.errors import ConfigError

FILE_SUFFIX: Final = "_FILE"
ALSO_FROM_FILES: Final = ("flower_user", "console_users")
"""Settings read from files too, though not ``SecretStr``: Flower's user goes with its
password, and the console's users carry their password hashes."""
SECRET_QUERY_WORDS: Final = ("password", "secret", "token")
"""A URL's query parameter whose name has one of these holds a secret (``sslpassword``)."""


def secret_fields(settings_cls: type[BaseSettings]) -> list[str]:
    """The fields a ``CONVEYOR_<NAME>_FILE`` variable may set, in declaration order."""
    return [
        name
        for name, field in settings_cls.model_fields.items()
        if _is_secret(field) or name in ALSO_FROM_FILES
    ]


def _is_secret(field: FieldInfo) -> bool:
    return field.annotation is SecretStr or SecretStr in get_args(field.annotation)


def read_secret_file(variable: str, path: Path) -> str:
    """The secret in the file at ``path`` (named by ``variable``), trailing line breaks
    stripped. Raises :class:`ConfigError` naming both when it cannot be read or is empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{variable}: {path} is not UTF-8 text") from None
    value = text.rstrip("\r\n")
    if not value:
        raise ConfigError(f"{variable}: {path} is empty")
    return value


class SecretFiles(PydanticBaseSettingsSource):
    """The settings source of ``CONVEYOR_<NAME>_FILE`` variables (environment or ``.env``).

    Settings list it right after the code's own values (``load_settings(x=...)``) and
    before the environment, so a file's value wins over an empty ``CONVEYOR_<NAME>``.
    Raises :class:`ConfigError` as it reads (see the module's docstring).
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        *,
        env: PydanticBaseSettingsSource,
        dotenv: PydanticBaseSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self.case_sensitive = bool(self.config.get("case_sensitive", False))
        # Both sources hold every variable they saw (names lower-cased unless case
        # sensitive); the environment wins over .env, as it does for values.
        self.variables: dict[str, str | None] = {}
        for source in (dotenv, env):
            if isinstance(source, EnvSettingsSource):
                self.variables.update(source.env_vars)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: :meth:`__call__` reads every secret field at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.config.get("env_prefix", ""))
        values: dict[str, Any] = {}
        for name in secret_fields(self.settings_cls):
            variable = f"{prefix}{name}".upper()
            path = self._get(variable + FILE_SUFFIX)
            if not path:
                continue
            if self._get(variable):
                raise ConfigError(
                    f"{variable} and {variable}{FILE_SUFFIX} are both set: give the "
                    "value or the file that holds it, not both"
                )
            values[name] = read_secret_file(variable + FILE_SUFFIX, Path(path))
        return values

    def _get(self, variable: str) -> str | None:
        return self.variables.get(variable if self.case_sensitive else variable.lower())


def secret_values(settings: BaseSettings) -> set[str]:
    """The text of ``settings``' secrets, to be masked wherever it would be shown.

    For a URL: its credentials (the password, or a lone user part such as a Sentry DSN's
    key), percent-encoded and decoded, secret query parameters, and the whole URL when it
    has any of them; a URL without credentials hides nothing. Any other secret setting:
    its value. Empty and one-character values are left out.
    """
    found: set[str] = set()
    for name, field in type(settings).model_fields.items():
        if not _is_secret(field):
            continue
        secret = getattr(settings, name)
        if not isinstance(secret, SecretStr):
            continue
        value = secret.get_secret_value()
        if "://" not in value:
            found.add(value)
            continue
        parts = set(_url_secrets(value))
        found |= parts
        if parts:
            found.add(value)
    return {value for value in found if len(value) > 1}


def _url_secrets(value: str) -> Iterator[str]:
    # kombu's failover lists join URLs with ";"; libpq's multi-host form has one userinfo.
    for url in value.split(";"):
        parts = urlsplit(url.strip())
        userinfo, at, _ = parts.netloc.rpartition("@")
        if at:
            user, colon, password = userinfo.partition(":")
            for part in (password,) if colon else (user,):
                yield from (part, unquote(part))
        for key, item in parse_qsl(parts.query):
            if any(word in key.lower() for word in SECRET_QUERY_WORDS):
                yield item
