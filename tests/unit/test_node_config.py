"""`[migration] node_name` and `lease_seconds`: defaults, explicit values, bad values."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mailmigrator.ops.config import ConfigError, load_config


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailmigrator.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_node_name_defaults_to_host_and_first_proxy_listener(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, '[proxy]\nimap = ["127.0.0.2:1143", "127.0.0.3:1143"]\n'))
    assert config.migration.node_name == f"{socket.gethostname()}/127.0.0.2:1143"
    assert config.migration.lease_seconds == 120.0


def test_node_name_without_listeners_is_the_host_name(tmp_path: Path) -> None:
    assert load_config(config_file(tmp_path, "")).migration.node_name == socket.gethostname()


def test_explicit_node_name_and_lease(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, '[migration]\nnode_name = " node-7 "\nlease_seconds = 30\n'))
    assert (config.migration.node_name, config.migration.lease_seconds) == ("node-7", 30.0)


def test_too_short_lease_is_refused_with_the_key_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[migration\] lease_seconds must be at least 5"):
        load_config(config_file(tmp_path, "[migration]\nlease_seconds = 1\n"))
