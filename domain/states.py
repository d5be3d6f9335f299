"""The state machines, each one table: state -> {event name: next state}.

Anything not in a table is illegal; aggregates consult these tables before
every change, and the tests walk them exhaustively.
"""

from __future__ import annotations

from typing import Final

ACCOUNT_STATES: Final = ("seen", "verified", "created", "copying", "completed", "swept", "failed")

# Logins and rejected passwords are recorded in every state before completion;
# after completion the new server checks passwords, so the proxy records nothing.
ACCOUNT_TRANSITIONS: Final[dict[str, dict[str, str]]] = {
    "seen": {
        "LoginSeen": "seen",
        "PasswordRejected": "seen",
        "PasswordVerified": "verified",
    },
    "verified": {
        "LoginSeen": "verified",
        "PasswordRejected": "verified",
        "PasswordVerified": "verified",
        "AccountCreated": "created",
        "MigrationFailed": "failed",
    },
    "created": {
        "LoginSeen": "created",
        "AliasesRejected": "created",
        "PasswordRejected": "created",
        "PasswordVerified": "created",
        "MigrationStarted": "copying",
        # passwords_only: verified, created, done, no mail copied.
        "MigrationCompleted": "completed",
        "MigrationFailed": "failed",
    },
    "copying": {
        "LoginSeen": "copying",
        "PasswordRejected": "copying",
        "PasswordVerified": "copying",
        # A resume after a crash or restart starts again from the checkpoints.
        "MigrationStarted": "copying",
        "FolderCopied": "copying",
        "MigrationCompleted": "completed",
        "MigrationFailed": "failed",
    },
    "completed": {
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
        "LoginSeen": "failed",
        "PasswordRejected": "failed",
        "PasswordVerified": "failed",
        "AccountCreated": "created",
        "MigrationStarted": "copying",
        "MigrationFailed": "failed",
    },
}

# Locked users cannot reach their mail; the proxy shows them the notice mailbox.
LOCKED_STATES: Final = frozenset({"verified", "created", "copying", "failed"})
# Migrated: the new server holds the mail and checks the password.
SETTLED_STATES: Final = frozenset({"completed", "swept"})
# Not yet verified: the old server still serves these users.
UNVERIFIED_STATES: Final = frozenset({"seen"})
# A node copying the account holds a lease; a failed copy keeps it until it expires.
LEASED_STATES: Final = frozenset({"copying", "failed"})

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


def next_state(table: dict[str, dict[str, str]], state: str, event_name: str) -> str | None:
    """The state after `event_name` in `state`, or None where the table forbids it."""
    return table.get(state, {}).get(event_name)
