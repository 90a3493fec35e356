"""The NATS sink's options: one server or several, replicas, and the lines bad values get."""

from __future__ import annotations

import pytest

from canvoy.bridge.sinks.nats import NatsConfig
from canvoy.config import build
from canvoy.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        ("nats://a:4222", ["nats://a:4222"]),
        ("nats://a:4222, nats://b:4222", ["nats://a:4222", "nats://b:4222"]),
        (["nats://a:4222", "tls://b:4222"], ["nats://a:4222", "tls://b:4222"]),
    ],
)
def test_one_server_or_several(url: object, servers: list[str]) -> None:
    config = build(NatsConfig, {"url": url, "replicas": 3}, "sinks.stream")
    assert config.servers == servers
    assert config.replicas == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "http://a:4222"}, r"sinks\.stream: url: 'http://a:4222' must start with nats://"),
        ({"url": []}, r"url: give at least one server"),
        ({"url": " , "}, r"url: give at least one server"),
        ({"replicas": 0}, r"replicas: 0 must be 1\.\.5"),
        ({"replicas": 7}, r"replicas: 7 must be 1\.\.5"),
        ({"reconnect_wait_s": 0}, r"reconnect_wait_s must be > 0"),
        ({"urls": ["nats://a:4222"]}, r"sinks\.stream\.urls: unknown key"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(NatsConfig, options, "sinks.stream")
