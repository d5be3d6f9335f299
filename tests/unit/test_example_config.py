"""The shipped example config and the contract's example both load without error."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailmigrator.ops.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_example_loads() -> None:
    config = load_config(ROOT / "ops" / "mailmigrator.example.toml")
    assert config.source is not None and config.source.imap_port == 993
    assert config.target is not None and config.target.master_user == "mailmigrator"
    assert [str(e) for e in config.proxy.imap] == ["0.0.0.0:143"]
    assert config.migration.primary_domain == "example.com"


def test_contract_example_loads() -> None:
    contract = ROOT.parent / "shared" / "spec" / "config.example.toml"
    if not contract.exists():
        pytest.skip(f"the contract is not beside this clone ({contract})")
    config = load_config(contract)
    assert config.store.url.startswith("sqlite:")
    assert config.source is not None and config.source.tls == "direct"
