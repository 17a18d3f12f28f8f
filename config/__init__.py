"""Conveyor's configuration: one typed settings object and the Celery options derived from it."""

if __name__ != "conveyor.config":  # a second copy would hold second settings classes
    raise ImportError(f"import conveyor.config, not {__name__}: it is not a top-level package")


from conveyor.config.celery import celery_config
from conveyor.config.errors import ConfigError
from conveyor.config.settings import Settings, load_settings

__all__ = ["ConfigError", "Settings", "celery_config", "load_settings"]
