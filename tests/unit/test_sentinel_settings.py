"""Settings for Redis reached through Sentinel: URL lists, the master name, Celery options."""

from __future__ import annotations

import pytest

from conveyor.config.celery import celery_config
from conveyor.config.errors import ConfigError
from conveyor.config.settings import BrokerKind, load_settings

pytestmark = pytest.mark.unit

SENTINELS = "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380;sentinel://127.0.0.1:26381"


def test_a_sentinel_list_is_a_redis_broker() -> None:
    settings = load_settings(broker_url=SENTINELS, redis_sentinel_master="conveyor")
    assert settings.broker_kind is BrokerKind.REDIS
    assert settings.is_sentinel


def test_a_sentinel_url_without_a_master_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="CONVEYOR_REDIS_SENTINEL_MASTER"):
        load_settings(broker_url=SENTINELS)


def test_every_url_of_the_list_is_checked() -> None:
    with pytest.raises(ConfigError, match="unsupported scheme"):
        load_settings(broker_url="sentinel://127.0.0.1:26379;http://x", redis_sentinel_master="m")


def test_sentinel_options_reach_broker_and_result_backend() -> None:
    options = celery_config(load_settings(broker_url=SENTINELS, redis_sentinel_master="conveyor"))
    assert options["broker_transport"] == "conveyor.worker.transports:SentinelTransport"
    assert options["broker_transport_options"]["master_name"] == "conveyor"
    assert options["result_backend_transport_options"]["master_name"] == "conveyor"
