"""The root of Conveyor's exception hierarchy, at the bottom layer so ``config`` needs nothing
from ``worker``. The rest of the hierarchy, and what each class means to its handler, is in
:mod:`worker.errors`, which re-exports these."""

from __future__ import annotations


class ConveyorError(Exception):
    """Root of every error Conveyor raises on purpose."""


class UsageError(ConveyorError):
    """A caller's mistake, reported as one line."""


class ConfigError(UsageError):
    """The settings are invalid; the message names the ``CONVEYOR_*`` variable."""
