"""The post-migrate script runs directly with EMAIL and PASSWORD intact, is timed out, and never leaks the password."""

from __future__ import annotations

import sys
from pathlib import Path

from mailmigrator.adapters.post_script import PostMigrateScript

PASSWORD = "p a s s 'quoted' \"double\" $HOME `x` ;rm -rf"


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "post.py"
    path.write_text(f"#!{sys.executable}\nimport sys, time, pathlib\n{body}\n")
    path.chmod(0o755)
    return path


async def test_arguments_arrive_intact(tmp_path: Path) -> None:
    out = tmp_path / "args.txt"
    path = script(tmp_path, f"pathlib.Path({str(out)!r}).write_text(repr(sys.argv[1:]))\nprint('saw', sys.argv[2])")
    outcome = await PostMigrateScript(path, 10).run("amy@example.com", PASSWORD)
    assert outcome.exit_status == 0 and not outcome.timed_out
    assert out.read_text() == repr(["amy@example.com", PASSWORD])
    assert outcome.stdout == "saw [redacted]\n"


async def test_failure_is_reported_with_its_status(tmp_path: Path) -> None:
    path = script(tmp_path, "print('boom', sys.argv[2], file=sys.stderr)\nsys.exit(3)")
    outcome = await PostMigrateScript(path, 10).run("amy@example.com", PASSWORD)
    assert outcome.exit_status == 3 and not outcome.timed_out
    assert "boom [redacted]" in outcome.stderr and "quoted" not in outcome.stderr


async def test_hanging_script_is_killed_at_the_timeout(tmp_path: Path) -> None:
    path = script(tmp_path, "time.sleep(60)")
    outcome = await PostMigrateScript(path, 0.5).run("amy@example.com", PASSWORD)
    assert outcome.timed_out
    assert outcome.exit_status != 0
    assert outcome.duration_seconds < 5


async def test_missing_script_is_a_recorded_failure(tmp_path: Path) -> None:
    outcome = await PostMigrateScript(tmp_path / "absent.sh", 5).run("amy@example.com", PASSWORD)
    assert outcome.exit_status == 127 and "cannot run" in outcome.stderr
