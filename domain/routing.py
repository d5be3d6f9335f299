"""Where a client's login goes, decided from the account's state, the run's state and the settings.

A login first takes one of these roads (`first_road`): straight to the new
server (migrated accounts), through to the old server (a stopped run has not
begun this account, or the user keeps working there while the copy runs), to
the migration notice or a refusal (a copy is running with this very password),
a short wait (the account is switching to the new server), or a password
check on the old server. After a successful
check, `after_verification` says where the user lands.
"""

from __future__ import annotations

from typing import Literal

from mailmigrator.domain.states import SETTLED_STATES, UNVERIFIED_STATES

FirstRoad = Literal["new", "old", "notice", "refuse", "wait", "verify"]
Landing = Literal["new", "old", "notice", "refuse"]
MailProtocol = Literal["imap", "pop3"]
SourceProtocol = Literal["imap", "pop3", "both"]
WhileCopying = Literal["old-server", "notice", "refuse"]


def first_road(state: str | None, run_state: str, *, holds_same_password: bool,
               while_copying: str = "notice") -> FirstRoad:
    """The first step for a login of an account in `state` (None: never seen) while the run is `run_state`.

    `holds_same_password`: a migration of this account is running here with the password just typed,
    so asking the old server again would only add load: the login goes where `while_copying` sends
    users during a copy (to the old server, whose own login then checks the password).
    A switch in progress (`switching`) lasts seconds: the login waits for it ("wait").
    """
    if state in SETTLED_STATES:
        return "new"
    if state == "switching":
        return "wait"
    unverified = state is None or state in UNVERIFIED_STATES
    if unverified and run_state == "stopped":
        return "old"
    if not unverified and holds_same_password:
        return while_copying_road(while_copying)
    return "verify"


def while_copying_road(while_copying: str) -> Literal["old", "notice", "refuse"]:
    """Where a user whose mail is being copied goes: the old server, the notice mailbox, or a refusal."""
    if while_copying == "old-server":
        return "old"
    return "refuse" if while_copying == "refuse" else "notice"


def after_verification(*, passwords_only: bool, has_notice_account: bool,
                       while_copying: str = "notice") -> Landing:
    """Where a user whose password the old server accepted lands while their account migrates.

    With `passwords_only` the migration is only the password, done before answering, so the user
    lands on the new server; with `while_copying = "old-server"` on the old server while the copy
    runs; with "notice" on the notice mailbox, or, without one, a "try again later"; with "refuse"
    a "try again later".
    """
    if passwords_only:
        return "new"
    road = while_copying_road(while_copying)
    if road == "notice" and not has_notice_account:
        return "refuse"
    return road


def password_check_protocol(login_protocol: MailProtocol, source_protocol: str) -> MailProtocol:
    """The protocol the old server checks a password over: the login's own when it speaks both."""
    if source_protocol == "both":
        return login_protocol
    return "pop3" if source_protocol == "pop3" else "imap"
