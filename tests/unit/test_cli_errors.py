"""A configuration error raised inside a trio nursery (as in `serve`) is still one line and exit 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from mailmigrator.ops import cli
from mailmigrator.ops.config import Config, ConfigError


def serve_like(error: Exception) -> Callable[[Config, object], int]:
    """A command that, like `serve`, meets `error` in one task of a nursery."""
    def command(config: Config, args: object) -> int:
        async def run() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)

                async def fails() -> None:
                    raise error

                nursery.start_soon(fails)

        trio.run(run)
        return 0

    return command


def test_config_error_in_a_nursery_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "status", serve_like(ConfigError("[admin] password_file /x is empty")))
    monkeypatch.setenv("MAILMIGRATOR_CONFIG", str(tmp_path / "absent.toml"))
    assert cli.main(["status"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "mailmigrator: [admin] password_file /x is empty"


def test_other_errors_in_a_nursery_are_not_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "status", serve_like(RuntimeError("a bug")))
    monkeypatch.setenv("MAILMIGRATOR_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(BaseExceptionGroup):
        cli.main(["status"])


def test_an_unknown_account_state_is_named_with_the_known_ones_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAILMIGRATOR_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["status", "--state", "nosuch"])
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "'nosuch'" in line and "'failed'" in line and "'copying'" in line, line
