"""`[proxy]` connection limits: defaults, explicit values into the proxy's limits, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailmigrator.ops.config import ConfigError, load_config
from mailmigrator.ops.composition import proxy_limits


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailmigrator.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_configured_limits_reach_the_proxy(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, "[proxy]\nmax_connections = 50\nmax_connections_per_address = 7\n"
                                               "login_timeout = 30\nsend_timeout = 5\nrelay_send_timeout = 90\n"))
    limits = proxy_limits(config)
    assert (limits.max_connections, limits.max_connections_per_address) == (50, 7)
    assert (limits.login_timeout, limits.send_timeout, limits.relay_send_timeout) == (30.0, 5.0, 90.0)


def test_default_limits(tmp_path: Path) -> None:
    limits = proxy_limits(load_config(config_file(tmp_path, "")))
    assert (limits.max_connections, limits.max_connections_per_address, limits.login_timeout) == (20_000, 1_000, 120.0)


@pytest.mark.parametrize("key", ["max_connections", "max_connections_per_address", "login_timeout", "send_timeout",
                                 "relay_send_timeout"])
def test_a_limit_of_zero_is_refused_with_the_key_named(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[proxy\] {key} must be a positive number"):
        load_config(config_file(tmp_path, f"[proxy]\n{key} = 0\n"))
