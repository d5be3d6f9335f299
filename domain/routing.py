"""Where a client's login goes, decided from the account's state, the run's state and the settings.

A login first takes one of four roads (`first_road`): straight to the new
server (migrated accounts), through to the old server (a stopped run has not
begun this account), to the migration notice (a copy is running with this
very password), or a password check on the old server. After a successful
check, `after_verification` says where the user lands.
"""

from __future__ import annotations

from typing import Literal

from mailmigrator.domain.states import SETTLED_STATES, UNVERIFIED_STATES

FirstRoad = Literal["new", "old", "notice", "verify"]
Landing = Literal["new", "notice", "refuse"]
MailProtocol = Literal["imap", "pop3"]
SourceProtocol = Literal["imap", "pop3", "both"]


def first_road(state: str | None, run_state: str, *, holds_same_password: bool) -> FirstRoad:
    """The first step for a login of an account in `state` (None: never seen) while the run is `run_state`.

    `holds_same_password`: a migration of this account is running here with the password just typed,
    so asking the old server again would only add load.
    """
    if state in SETTLED_STATES:
        return "new"
    unverified = state is None or state in UNVERIFIED_STATES
    if unverified and run_state == "stopped":
        return "old"
    if not unverified and holds_same_password:
        return "notice"
    return "verify"


def after_verification(*, passwords_only: bool, has_notice_account: bool) -> Landing:
    """Where a user whose password the old server accepted lands while their account migrates.

    With `passwords_only` the migration is only the password, done before answering, so the user
    lands on the new server; otherwise on the notice mailbox, or, without one, a "try again later".
    """
    if passwords_only:
        return "new"
    return "notice" if has_notice_account else "refuse"


def password_check_protocol(login_protocol: MailProtocol, source_protocol: str) -> MailProtocol:
    """The protocol the old server checks a password over: the login's own when it speaks both."""
    if source_protocol == "both":
        return login_protocol
    return "pop3" if source_protocol == "pop3" else "imap"
