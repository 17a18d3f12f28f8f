"""Conveyor's configuration: one typed settings object and the Celery options derived from it."""

from config.celery import celery_config
from config.errors import ConfigError
from config.settings import Settings, load_settings

__all__ = ["ConfigError", "Settings", "celery_config", "load_settings"]
