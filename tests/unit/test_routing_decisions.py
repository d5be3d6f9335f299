"""Where a login goes: every account state against every run state, and the landing after a verified password."""

from __future__ import annotations

import pytest

from mailmigrator.domain.routing import after_verification, first_road, password_check_protocol
from mailmigrator.domain.states import ACCOUNT_STATES, RUN_STATES

# (account state or None for a login never seen, run state, a running migration holds this password) -> road
FIRST_ROADS = [
    (None, "stopped", False, "old"),
    (None, "started", False, "verify"),
    (None, "finishing", False, "verify"),
    (None, "finished", False, "verify"),
    ("seen", "stopped", False, "old"),
    ("seen", "started", False, "verify"),
    ("seen", "started", True, "verify"),
    ("verified", "stopped", False, "verify"),
    ("verified", "started", True, "notice"),
    ("created", "started", False, "verify"),
    ("copying", "started", True, "notice"),
    ("copying", "stopped", True, "notice"),
    ("failed", "started", False, "verify"),
    ("failed", "started", True, "notice"),
    ("completed", "started", False, "new"),
    ("completed", "stopped", False, "new"),
    ("swept", "finished", True, "new"),
]


@pytest.mark.parametrize(("state", "run", "holds", "road"), FIRST_ROADS)
def test_first_road(state: str | None, run: str, holds: bool, road: str) -> None:
    assert first_road(state, run, holds_same_password=holds) == road


@pytest.mark.parametrize("run", RUN_STATES)
@pytest.mark.parametrize("state", ACCOUNT_STATES)
def test_every_state_has_a_road_and_migrated_accounts_always_go_to_the_new_server(state: str, run: str) -> None:
    for holds in (False, True):
        road = first_road(state, run, holds_same_password=holds)
        assert road in ("new", "old", "notice", "verify")
        assert (road == "new") == (state in ("completed", "swept"))
        # The old server is only reached without a check while nothing has been verified.
        assert road != "old" or (state == "seen" and run == "stopped")


@pytest.mark.parametrize(("passwords_only", "notice", "landing"), [
    (True, True, "new"), (True, False, "new"), (False, True, "notice"), (False, False, "refuse"),
])
def test_after_verification(passwords_only: bool, notice: bool, landing: str) -> None:
    assert after_verification(passwords_only=passwords_only, has_notice_account=notice) == landing


@pytest.mark.parametrize(("login", "source", "checked"), [
    ("imap", "imap", "imap"), ("pop3", "imap", "imap"), ("imap", "pop3", "pop3"),
    ("pop3", "both", "pop3"), ("imap", "both", "imap"),
])
def test_password_check_protocol(login: str, source: str, checked: str) -> None:
    assert password_check_protocol(login, source) == checked  # type: ignore[arg-type]
