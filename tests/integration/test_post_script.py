"""The post-migrate script runs directly with EMAIL and its password intact, is timed out, and never leaks the password."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from mailmigrator.adapters.scripts.post_migrate import PostMigrateScript

PASSWORD = "p a s s 'quoted' \"double\" $HOME `x` ;rm -rf"


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "post.py"
    path.write_text(f"#!{sys.executable}\nimport sys, time, pathlib\n{body}\n")
    path.chmod(0o755)
    return path


def seen_by_script(out: Path) -> dict[str, object]:
    return dict(ast.literal_eval(out.read_text()))


# What the script saw: its arguments, its whole command line as the kernel shows it to every user, its stdin, its env.
REPORT = ("report = {'argv': sys.argv[1:], 'cmdline': pathlib.Path('/proc/self/cmdline').read_bytes(), "
          "'stdin': sys.stdin.read(), 'env': os.environ.get('MAILMIGRATOR_PASSWORD')}\n")


async def test_password_arrives_on_stdin_and_not_on_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "seen.txt"
    path = script(tmp_path, f"import os\n{REPORT}pathlib.Path({str(out)!r}).write_text(repr(report))\n"
                            "print('saw', report['stdin'].rstrip())")
    outcome = await PostMigrateScript(path, 10, "stdin").run("amy@example.com", PASSWORD)
    assert outcome.exit_status == 0 and not outcome.timed_out
    seen = seen_by_script(out)
    assert seen["argv"] == ["amy@example.com"]
    assert seen["stdin"] == PASSWORD + "\n" and seen["env"] is None
    assert PASSWORD.encode() not in seen["cmdline"] and b"amy@example.com" in seen["cmdline"]
    assert outcome.stdout == "saw [redacted]\n"


async def test_password_in_the_environment_and_not_on_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "seen.txt"
    path = script(tmp_path, f"import os\n{REPORT}pathlib.Path({str(out)!r}).write_text(repr(report))")
    outcome = await PostMigrateScript(path, 10, "env").run("amy@example.com", PASSWORD)
    assert outcome.exit_status == 0
    seen = seen_by_script(out)
    assert seen["argv"] == ["amy@example.com"] and seen["env"] == PASSWORD and seen["stdin"] == ""
    assert PASSWORD.encode() not in seen["cmdline"]


async def test_a_script_that_never_reads_stdin_still_succeeds(tmp_path: Path) -> None:
    path = script(tmp_path, "sys.stdin.close()\ntime.sleep(0.2)\nprint('done')")
    outcome = await PostMigrateScript(path, 10, "stdin").run("amy@example.com", PASSWORD)
    assert outcome.exit_status == 0 and outcome.stdout == "done\n"


async def test_argv_mode_keeps_the_contracts_script_email_password(tmp_path: Path) -> None:
    out = tmp_path / "args.txt"
    path = script(tmp_path, f"pathlib.Path({str(out)!r}).write_text(repr(sys.argv[1:]))\nprint('saw', sys.argv[2])")
    outcome = await PostMigrateScript(path, 10, "argv").run("amy@example.com", PASSWORD)
    assert outcome.exit_status == 0 and not outcome.timed_out
    assert out.read_text() == repr(["amy@example.com", PASSWORD])
    assert outcome.stdout == "saw [redacted]\n"


async def test_failure_is_reported_with_its_status(tmp_path: Path) -> None:
    path = script(tmp_path, "print('boom', sys.stdin.readline().rstrip(), file=sys.stderr)\nsys.exit(3)")
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
