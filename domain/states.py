"""The state machines, each one table: state -> {event name: next state}.

Anything not in a table is illegal; aggregates consult these tables before
every change, and the tests walk them exhaustively.
"""

from __future__ import annotations

from typing import Final

ACCOUNT_STATES: Final = (
    "expected", "withdrawn", "seen", "verified", "created", "precopied", "precopying", "copying", "copied",
    "switching", "completed", "swept", "failed",
)

# Recorded in every state: the roster (`roster import`), and the last comparison of old and new (`verify`).
_ANY_STATE: Final = ("Expected", "RemovedFromRoster", "MailboxesCompared")

# Logins and rejected passwords are recorded in every state before completion;
# after completion the new server checks passwords, so the proxy records nothing.
_TRANSITIONS: Final[dict[str, dict[str, str]]] = {
    # On the roster, never seen: the old server serves the user; a pre-copy may prepare the new account.
    "expected": {
        "RemovedFromRoster": "withdrawn",
        "LoginSeen": "seen",
        "CopyModeChosen": "expected",
        "PasswordRejected": "expected",
        "PasswordVerified": "verified",
        "AccountPrepared": "precopied",
    },
    # Taken off the roster (`roster import --replace`) before it was ever seen.
    "withdrawn": {
        "Expected": "expected",
        "LoginSeen": "seen",
        "CopyModeChosen": "withdrawn",
        "PasswordRejected": "withdrawn",
        "PasswordVerified": "verified",
        "AccountPrepared": "precopied",
    },
    "seen": {
        "LoginSeen": "seen",
        "CopyModeChosen": "seen",
        "PasswordRejected": "seen",
        "PasswordVerified": "verified",
        "AccountPrepared": "precopied",
    },
    # Created on the new server without a usable password, mail copied ahead of the first login (`precopy`);
    # the user is still served by the old server. The verified first login makes the switch due.
    "precopied": {
        "LoginSeen": "precopied",
        "CopyModeChosen": "precopied",
        "PasswordRejected": "precopied",
        "PasswordVerified": "copied",
        # A pre-copy pass (the first, or a refresh of the delta).
        "MigrationStarted": "precopying",
    },
    "precopying": {
        "LoginSeen": "precopying",
        "CopyModeChosen": "precopying",
        "PasswordRejected": "precopying",
        "PasswordVerified": "precopying",
        "MigrationStarted": "precopying",
        "FolderCopied": "precopying",
        "CopyCaughtUp": "precopied",
        # The partial copy stays; the next pass resumes from its checkpoints.
        "MigrationFailed": "precopied",
    },
    "verified": {
        "LoginSeen": "verified",
        "PasswordRejected": "verified",
        "PasswordVerified": "verified",
        "CopyModeChosen": "verified",
        "AccountCreated": "created",
        "MigrationFailed": "failed",
    },
    "created": {
        "FiltersCopied": "created",
        "FiltersNotCopied": "created",
        "LoginSeen": "created",
        "AliasesRejected": "created",
        "PasswordRejected": "created",
        "PasswordVerified": "created",
        "CopyModeChosen": "created",
        "MigrationStarted": "copying",
        # passwords_only: verified, created, done, no mail copied.
        "MigrationCompleted": "completed",
        "MigrationFailed": "failed",
    },
    "copying": {
        "FiltersCopied": "copying",
        "FiltersNotCopied": "copying",
        "LoginSeen": "copying",
        "PasswordRejected": "copying",
        "PasswordVerified": "copying",
        # A resume after a crash or restart starts again from the checkpoints.
        "MigrationStarted": "copying",
        "FolderCopied": "copying",
        "CopyModeChosen": "copying",
        # while_copying = "old-server": the first pass ends here, the switch follows.
        "CopyCaughtUp": "copied",
        "MigrationCompleted": "completed",
        "MigrationFailed": "failed",
    },
    # Copied while the user kept working on the old server; the switch is due.
    "copied": {
        "PasswordSet": "copied",
        "LoginSeen": "copied",
        "PasswordRejected": "copied",
        "PasswordVerified": "copied",
        "CopyModeChosen": "copied",
        "SwitchStarted": "switching",
        "MigrationFailed": "failed",
    },
    # The final delta pass: the user's old sessions are closed, logins wait.
    "switching": {
        "PasswordSet": "switching",
        "FiltersCopied": "switching",
        "FiltersNotCopied": "switching",
        "LoginSeen": "switching",
        "PasswordRejected": "switching",
        "PasswordVerified": "switching",
        # A node resuming an interrupted switch claims it again.
        "SwitchStarted": "switching",
        "MigrationStarted": "switching",
        "FolderCopied": "switching",
        "MigrationCompleted": "completed",
        "MigrationFailed": "failed",
    },
    "completed": {
        "SwitchedOver": "completed",
        "PasswordVerified": "completed",
        "PostScriptRan": "completed",
        "FinishSwept": "swept",
        "CredentialDestroyed": "completed",
    },
    "swept": {
        "PasswordVerified": "swept",
        "PostScriptRan": "swept",
        "FinishSwept": "swept",
        "CredentialDestroyed": "swept",
    },
    "failed": {
        "PasswordSet": "failed",
        "FiltersCopied": "failed",
        "FiltersNotCopied": "failed",
        "LoginSeen": "failed",
        "PasswordRejected": "failed",
        "PasswordVerified": "failed",
        "AccountCreated": "created",
        "CopyModeChosen": "failed",
        "MigrationStarted": "copying",
        "MigrationFailed": "failed",
    },
}

ACCOUNT_TRANSITIONS: Final[dict[str, dict[str, str]]] = {
    state: {**{name: state for name in _ANY_STATE}, **moves} for state, moves in _TRANSITIONS.items()
}

# Locked users cannot reach their mail; the proxy shows them the notice mailbox
# (while_copying = "old-server" locks only `switching`: see `is_locked`).
LOCKED_STATES: Final = frozenset({"verified", "created", "copying", "failed", "switching"})
# Migrated: the new server holds the mail and checks the password.
SETTLED_STATES: Final = frozenset({"completed", "swept"})
# Not yet verified: the old server still serves these users, and their next login checks the password there.
UNVERIFIED_STATES: Final = frozenset({"expected", "withdrawn", "seen", "precopied", "precopying"})
# Not counted as part of the run: off the roster and never seen.
OFF_ROSTER_STATES: Final = frozenset({"withdrawn"})
# Mail copied ahead of the first login, the new account not yet usable.
PRECOPY_STATES: Final = frozenset({"precopied", "precopying"})
# `precopy` prepares the new account of these (never verified, so no password is known)...
PREPARABLE_STATES: Final = frozenset({"expected", "withdrawn", "seen"})
# ...and takes these: a first pass for the preparable ones, a refresh of the delta for `precopied`.
PRECOPYABLE_STATES: Final = PREPARABLE_STATES | {"precopied"}
# The owner never logged in: the roster's "not seen yet".
NOT_SEEN_STATES: Final = frozenset({"expected"}) | PRECOPY_STATES
# A node copying or switching the account holds a lease; a failed copy keeps it until it expires.
LEASED_STATES: Final = frozenset({"precopying", "copying", "copied", "switching", "failed"})
# A copy or a switch is due: a restarted node resumes these.
UNFINISHED_STATES: Final = LOCKED_STATES | {"copied"}
# No user session may stay on the old server: the switch runs or ran.
MOVED_STATES: Final = frozenset({"switching", "completed", "swept"})
# The first copy has caught up: what is left is the switch.
SWITCH_STATES: Final = frozenset({"copied", "switching"})

WHILE_COPYING_MODES: Final = ("old-server", "notice", "refuse")
DEFAULT_WHILE_COPYING: Final = "old-server"

RUN_STATES: Final = ("stopped", "started", "finishing", "finished")

RUN_TRANSITIONS: Final[dict[str, dict[str, str]]] = {
    "stopped": {
        "Configured": "stopped",
        "Started": "started",
        "FinishRequested": "finishing",
    },
    "started": {
        "Configured": "started",
        "Stopped": "stopped",
        "FinishRequested": "finishing",
    },
    "finishing": {
        "Configured": "finishing",
        # One process takes the finish work on; the store's concurrency picks it.
        "FinishClaimed": "finishing",
        "Stopped": "stopped",
        "FinishCompleted": "finished",
    },
    "finished": {
        "Configured": "finished",
        "Started": "started",
        "Stopped": "stopped",
        "FinishRequested": "finishing",
    },
}


def is_locked(state: str, while_copying: str) -> bool:
    """Whether the account's users are kept from their mail in `state`, the copy having run in `while_copying` mode.

    An empty mode is an account recorded before the choice existed: it was copied behind the notice.
    """
    if while_copying == "old-server":
        return state == "switching"
    return state in LOCKED_STATES


def delivered_by_old_server(state: str) -> bool:
    """Whether the account's incoming mail still goes to the old server (the transport map routes it there).

    Every state before completion, whichever `while_copying` mode: in old-server mode the user works there until
    the switch's final delta is done; in notice mode the copy still reads the old INBOX. Mail that reaches the old
    server late is carried by the final delta or the finish sweep.
    """
    return state not in SETTLED_STATES


def completion_event(state: str, while_copying: str) -> str:
    """The event that ends a copy pass in `state`: a pre-copy pass, and the first pass in old-server mode, only catch up."""
    if state == "precopying" or (state == "copying" and while_copying == "old-server"):
        return "CopyCaughtUp"
    return "MigrationCompleted"


def next_state(table: dict[str, dict[str, str]], state: str, event_name: str) -> str | None:
    """The state after `event_name` in `state`, or None where the table forbids it."""
    return table.get(state, {}).get(event_name)
