"""Where a login goes: every account state against every run state, and the landing after a verified password."""

from __future__ import annotations

import pytest

from mailmigrator.domain.routing import after_verification, first_road, password_check_protocol
from mailmigrator.domain.states import ACCOUNT_STATES, RUN_STATES, UNVERIFIED_STATES, completion_event, is_locked

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
        # A switch lasts seconds: its logins wait for it, whatever else holds.
        assert road in ("new", "old", "notice", "verify") or (state == "switching" and road == "wait")
        assert (road == "new") == (state in ("completed", "swept"))
        # The old server is only reached without a check while nothing has been verified.
        assert road != "old" or (state in UNVERIFIED_STATES and run == "stopped")


# while_copying = "old-server": (state, run, holds the password) -> road
OLD_SERVER_ROADS = [
    (None, "stopped", False, "old"),
    (None, "started", False, "verify"),
    ("verified", "started", True, "old"),
    ("created", "started", True, "old"),
    ("copying", "started", True, "old"),
    ("copying", "started", False, "verify"),
    ("copying", "stopped", True, "old"),
    ("copied", "started", True, "old"),
    ("copied", "started", False, "verify"),
    ("failed", "started", True, "old"),
    ("switching", "started", True, "wait"),
    ("switching", "started", False, "wait"),
    ("switching", "stopped", False, "wait"),
    ("completed", "started", True, "new"),
    ("swept", "started", False, "new"),
]


@pytest.mark.parametrize(("state", "run", "holds", "road"), OLD_SERVER_ROADS)
def test_first_road_while_users_keep_the_old_server(state: str | None, run: str, holds: bool, road: str) -> None:
    assert first_road(state, run, holds_same_password=holds, while_copying="old-server") == road


@pytest.mark.parametrize(("state", "holds", "road"), [
    ("copying", True, "refuse"), ("copied", True, "refuse"), ("copying", False, "verify"),
    ("switching", True, "wait"), ("completed", True, "new"),
])
def test_first_road_when_copies_are_refused(state: str, holds: bool, road: str) -> None:
    assert first_road(state, "started", holds_same_password=holds, while_copying="refuse") == road


@pytest.mark.parametrize("mode", ["old-server", "notice", "refuse"])
@pytest.mark.parametrize("run", RUN_STATES)
@pytest.mark.parametrize("state", ACCOUNT_STATES)
def test_every_mode_sends_migrated_accounts_to_the_new_server_and_switching_ones_to_wait(
        state: str, run: str, mode: str) -> None:
    for holds in (False, True):
        road = first_road(state, run, holds_same_password=holds, while_copying=mode)
        assert (road == "new") == (state in ("completed", "swept"))
        assert (road == "wait") == (state == "switching")
        assert road != "notice" or mode == "notice"
        assert road != "refuse" or mode == "refuse"


@pytest.mark.parametrize(("mode", "notice", "landing"), [
    ("old-server", True, "old"), ("old-server", False, "old"),
    ("notice", True, "notice"), ("notice", False, "refuse"),
    ("refuse", True, "refuse"), ("refuse", False, "refuse"),
])
def test_after_verification_by_mode(mode: str, notice: bool, landing: str) -> None:
    assert after_verification(passwords_only=False, has_notice_account=notice, while_copying=mode) == landing
    assert after_verification(passwords_only=True, has_notice_account=notice, while_copying=mode) == "new"


@pytest.mark.parametrize(("state", "mode", "locked"), [
    ("copying", "old-server", False), ("copied", "old-server", False), ("switching", "old-server", True),
    ("failed", "old-server", False), ("completed", "old-server", False),
    ("copying", "notice", True), ("copying", "", True), ("switching", "", True), ("copied", "notice", False),
    ("verified", "refuse", True),
])
def test_lock_by_state_and_mode(state: str, mode: str, locked: bool) -> None:
    assert is_locked(state, mode) == locked


@pytest.mark.parametrize(("state", "mode", "event"), [
    ("copying", "old-server", "CopyCaughtUp"), ("switching", "old-server", "MigrationCompleted"),
    ("copying", "notice", "MigrationCompleted"), ("copying", "", "MigrationCompleted"),
    ("created", "old-server", "MigrationCompleted"),
])
def test_completion_event(state: str, mode: str, event: str) -> None:
    assert completion_event(state, mode) == event


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
