"""`serve` and the open-file limit: the soft limit raised when connections need it, a cap beyond it refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailmigrator.ops.config import ConfigError, load_config
from mailmigrator.ops.open_files import RESERVED_FILES, plan_open_files


def test_a_soft_limit_below_what_the_connections_need_is_raised_to_the_hard_one() -> None:
    plan = plan_open_files(10_000, explicit=True, soft=1024, hard=65_536)
    assert plan.raise_soft_to == 65_536
    assert (plan.max_connections, plan.lowered_from) == (10_000, None)
    assert plan.relayed_fit == (65_536 - RESERVED_FILES) // 2


def test_a_soft_limit_that_holds_every_connection_relayed_is_left_alone() -> None:
    plan = plan_open_files(1_000, explicit=True, soft=2 * 1_000 + RESERVED_FILES, hard=65_536)
    assert plan.raise_soft_to is None and plan.max_connections == 1_000 and plan.relayed_fit == 1_000


def test_an_explicit_cap_beyond_the_hard_limit_is_refused_in_one_line_naming_the_key() -> None:
    with pytest.raises(ConfigError) as refused:
        plan_open_files(30_000, explicit=True, soft=1024, hard=20_000)
    message = str(refused.value)
    assert "\n" not in message
    assert "[proxy] max_connections = 30000" in message and f"at most {20_000 - RESERVED_FILES}" in message


def test_the_default_cap_is_lowered_to_fit_the_hard_limit() -> None:
    plan = plan_open_files(20_000, explicit=False, soft=1024, hard=4096)
    assert plan.raise_soft_to == 4096
    assert (plan.max_connections, plan.lowered_from) == (4096 - RESERVED_FILES, 20_000)


def test_a_cap_that_fits_before_login_but_not_all_relayed_is_kept_and_reported() -> None:
    plan = plan_open_files(15_000, explicit=True, soft=20_000, hard=20_000)
    assert plan.raise_soft_to is None and plan.max_connections == 15_000
    assert plan.relayed_fit == (20_000 - RESERVED_FILES) // 2 < 15_000


def test_the_config_says_whether_max_connections_was_set(tmp_path: Path) -> None:
    path = tmp_path / "mailmigrator.toml"
    path.write_text("[proxy]\nmax_connections = 100\n")
    assert "max_connections" in load_config(path).proxy.model_fields_set
    path.write_text("")
    assert "max_connections" not in load_config(path).proxy.model_fields_set
