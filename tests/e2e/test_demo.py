"""`bash ops/demo` runs the whole job on the embedded default and cleans up after itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.dovecot


def test_demo_migrates_sweeps_verifies_and_leaves_no_dovecot_running() -> None:
    if os.geteuid() != 0:
        pytest.skip("the demo runs Dovecot test instances and needs root")
    started = time.monotonic()
    # The project is already installed in this interpreter: the demo skips its venv step.
    done = subprocess.run(["bash", "ops/demo"], cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "MAILMIGRATOR_DEMO_PYTHON": sys.executable})
    elapsed = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert elapsed < 120
    assert "ann's INBOX shows: Subject: Your mailbox is being moved" in out  # the notice while copying
    assert "ben gets: b'[AUTHENTICATIONFAILED]" in out
    assert "cat's POP3 mailbox on the new server: 15 messages" in out
    assert "ann's INBOX on the new server: 400 messages" in out
    assert "finish: 2 account(s) swept, 1 late message(s) copied" in out
    assert re.search(r"^ann@example.com\s+swept\s+no\s+7\s+421\b", out, re.M)
    # An unknown login's wrong password is counted, never stored: ben appears in no view and no log line.
    assert "ben@example.com" not in out.split("ben gets:", 1)[1]
    assert "stored password destroyed (first finish sweep succeeded)" in out
    assert "ann@example.com: old and new mailbox are equal" in out
    assert "sales@example.com  ann@example.com" in out
    work = re.search(r"Dovecot stopped, (\S+) removed", out)
    assert work is not None and not Path(work.group(1)).exists()
    leftovers = subprocess.run(["pgrep", "-af", work.group(1)], capture_output=True, text=True).stdout
    assert leftovers.strip() == ""
