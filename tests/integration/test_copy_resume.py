"""SIGKILL of a copying `mailmigrator migrate` at three points, then a resume: equal mailboxes, zero duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from copy_testbed import FaultyRelay, message_count, new_user, started, write_config
import testbed

pytestmark = pytest.mark.dovecot

CLI = [sys.executable, "-c", "import sys; from mailmigrator.ops.cli import main; sys.exit(main(sys.argv[1:]))"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[testbed.DovecotServer, testbed.DovecotServer]]:
    ca = trustme.CA()
    base = tmp_path_factory.mktemp("resume-pair")
    with started(testbed.make_old_server(base / "old", ca)) as old, started(testbed.make_new_server(base / "new", ca)) as new:
        yield old, new


def _migrate(config: Path, login: str, password: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [*CLI, "--config", str(config), "migrate", "--user", login, "--password-stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdin is not None
    process.stdin.write(password + "\n")
    process.stdin.close()
    return process


def test_sigkill_at_three_points_then_resume_copies_everything_once(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path
) -> None:
    old, new = pair
    login, password = new_user(old, new)
    testbed.seed_standard_mailbox(old, login)
    for folder in ("INBOX", "Archive/2022", "Projekte/Alpha", "Sent", "Bulk/A", "Bulk/B", "Bulk/C"):
        testbed.seed_bulk(old, login, folder, [
            testbed.make_message(f"{folder}-{i}", size=6_000 + (i % 7) * 1_000) for i in range(120)
        ])
    total = message_count(old, login)
    # Slow the old server down so that each kill lands mid-copy.
    with FaultyRelay(("127.0.0.1", old.imap_port or 0), bytes_per_second=600_000) as relay:
        config = write_config(tmp_path, old, new, source_port=relay.port, tls="disable")
        # Kill 1: as soon as the first batch landed; kills 2 and 3: as soon as a resumed run added a batch.
        seen_at_kill: list[int] = []
        for _ in range(3):
            before = message_count(new, login)
            process = _migrate(config, login, password)
            deadline = time.monotonic() + 60
            while message_count(new, login) <= before and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert process.poll() is None, f"copy finished before the kill (exit {process.returncode})"
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            seen_at_kill.append(message_count(new, login))
        assert 0 < seen_at_kill[0] < seen_at_kill[1] < seen_at_kill[2] < total, seen_at_kill
        final = _migrate(config, login, password)
        final.wait(timeout=120)
        assert final.stdout is not None and final.stderr is not None
        out, err = final.stdout.read(), final.stderr.read()
        assert final.returncode == 0, out + err

    assert message_count(new, login) == total
    after = new.snapshot(login)
    for folder, records in old.snapshot(login).folders.items():
        assert sorted(after.folders[folder]) == sorted(records), folder
    verify = subprocess.run([*CLI, "--config", str(config), "verify", login, "--password-stdin"],
                            input=password + "\n", capture_output=True, text=True)
    # The relay is gone: verify through the config pointing at the real port.
    if verify.returncode != 0 and "connection refused" in verify.stderr:
        config = write_config(tmp_path, old, new)
        verify = subprocess.run([*CLI, "--config", str(config), "verify", login, "--password-stdin"],
                                input=password + "\n", capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    history = subprocess.run([*CLI, "--config", str(config), "history", login, "--json"],
                             capture_output=True, text=True, check=True)
    events = [e["event"] for e in json.loads(history.stdout)]
    # A kill can land before the start is recorded (while planning): that run leaves no MigrationStarted.
    assert events.count("MigrationStarted") >= 2, events
    assert events[-1] == "MailboxesCompared" and events[-2] == "MigrationCompleted", events  # then the verify
