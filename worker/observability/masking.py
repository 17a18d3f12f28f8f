"""Secrets masked as ``***`` wherever Conveyor shows text: logs, errors, the ledger, Sentry.

The settings keep secrets as ``SecretStr``, so printing the settings shows none. This is
the layer behind that, for text that quotes a secret all the same: a library error that
includes the URL it was given (httpx: ``Client error '401 Unauthorized' for url
'http://user:{password}@host/api/'``), a libpq conninfo in a message, a job's exception.

What is masked:

1. the secrets of the settings this process loaded (:func:`protect`; which ones:
   :func:`config.secret_files.secret_values`), those of :data:`MIN_MASKED_CHARS` or more
   wherever they appear, also as ``repr`` and JSON escape them;
2. any URL's password (``scheme://user:{password}@``) and any ``...password=VALUE`` (libpq's
   conninfo, query strings), configured or not, whatever their length.

A shorter secret is masked only where (2) finds it: masked anywhere, a password such as
``postgres`` would also cut ``postgresql`` out of every line. Use long random secrets.

Where it runs: every log line (:func:`mask_event`, in
:func:`~worker.observability.logs.configure_logging`); what the ledger records of a
failure (:func:`worker.errors.failure_of`), and so dead letters in ``conveyor dlq``, the
API, the console and their Sentry events; every Sentry event (:func:`mask_event_data`, in
``before_send``); the CLI's one-line errors (:func:`worker.cli.common.fail`); the traceback
of a command that crashes (:func:`protect` installs the hook).
"""

from __future__ import annotations

import json
import re
import sys
import traceback
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings
    from structlog.typing import EventDict, WrappedLogger

MASK: Final = "***"
MIN_MASKED_CHARS: Final = 12
"""Configured secrets this long or longer are masked wherever they appear."""

URL_PASSWORD: Final = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"]*):[^\s/?#@'\"]*@"
)
PASSWORD_PARAMETER: Final = re.compile(
    r"(?P<key>\b\w*password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&'\",;)]+)", re.IGNORECASE
)


class Masker:
    """Replaces secrets in text by :data:`MASK`; learns the secrets with :meth:`add`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask ``secrets`` from now on (those shorter than :data:`MIN_MASKED_CHARS`: no)."""
        variants = set()
        for secret in secrets:
            if len(secret) >= MIN_MASKED_CHARS:
                variants |= {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}
        if variants <= self._secrets:
            return
        self._secrets |= variants
        ordered = sorted(self._secrets, key=len, reverse=True)  # longest first: no leftovers
        self._pattern = re.compile("|".join(re.escape(secret) for secret in ordered))

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        if "@" in text:
            text = URL_PASSWORD.sub(rf"\g<head>:{MASK}@", text)
        if "=" in text:
            text = PASSWORD_PARAMETER.sub(rf"\g<key>{MASK}", text)
        return text

    def walk(self, value: Any) -> Any:
        """``value`` with every string in it masked, in dicts and lists at any depth
        (keys are kept as they are: they name fields, they hold no secrets)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {key: self.walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.walk(item) for item in value]
        if type(value) is tuple:  # not a named tuple, whose class takes no iterable
            return tuple(self.walk(item) for item in value)
        return value


SECRETS: Final = Masker()
"""This process's masker: what every output of the process goes through."""


def mask(text: str) -> str:
    """``text`` with this process's secrets, and any URL's password, masked."""
    return SECRETS(text)


def protect(settings: BaseSettings) -> None:
    """Mask ``settings``' secrets in everything this process shows from now on.

    Every ``conveyor`` command calls it as it reads its settings (and :func:`init_sentry
    <worker.observability.sentry.init_sentry>` with its own); calling it again is harmless.
    It also makes an uncaught exception's traceback go through the masker.
    """
    from conveyor.config.secret_files import secret_values

    SECRETS.add(secret_values(settings))
    if sys.excepthook is sys.__excepthook__:  # another hook (Sentry's) wraps this one
        sys.excepthook = _masked_excepthook


def _masked_excepthook(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    """The interpreter's report of an uncaught exception, masked."""
    sys.stderr.write(mask("".join(traceback.format_exception(kind, error, trace))))


def mask_event(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """A structlog processor: every string value of the log line masked (run after the
    exception is formatted, before rendering)."""
    for key, value in event.items():
        event[key] = SECRETS.walk(value)
    return event


def mask_event_data(event: dict[str, Any]) -> dict[str, Any]:
    """A Sentry event with every string in it masked (``before_send``'s last step)."""
    masked: dict[str, Any] = SECRETS.walk(event)
    return masked
