"""Folding events into the read models: pure functions over plain dicts.

An account document is what `status`, `show` and the console show of one
account; the run document likewise for the run. Both are rebuilt exactly by
replaying the same events through the same functions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import NotRequired, TypedDict

from eventsourcing.domain import Aggregate

from mailmigrator.domain.model import AccountMigration as Account
from mailmigrator.domain.model import MigrationRun as Run
from mailmigrator.domain.states import LEASED_STATES, SETTLED_STATES, is_locked


class FolderDoc(TypedDict):
    target: str
    messages: int
    bytes: int
    skipped: int
    planned_messages: int
    done: bool
    uidvalidity: int | None
    highest_uid: int


class PostScriptDoc(TypedDict):
    exit_status: int
    duration_seconds: float
    timed_out: bool
    at: str


class SwitchDoc(TypedDict):
    duration_seconds: float
    sessions_closed: int
    delta_messages: int
    at: str


class AccountDoc(TypedDict):
    """One account as `status`, `show` and the console show it; times are ISO strings."""

    login: str
    state: str
    locked: bool
    target_login: str | None
    aliases: list[str]
    alias_conflicts: list[dict[str, str]]
    folders: dict[str, FolderDoc]
    messages: int
    bytes: int
    planned_messages: int
    planned_bytes: int
    skipped: int
    attempts: int
    logins: int
    passwords_verified: int
    passwords_rejected: int
    last_protocol: str | None
    first_seen: str
    verified_at: str | None
    started_at: str | None
    completed_at: str | None
    updated_at: str
    error: str | None
    retryable: bool | None
    post_script: PostScriptDoc | None
    swept_messages: int
    swept_at: str | None
    credential_destroyed_at: str | None
    passwords_only: bool
    node: str
    lease_renewed_at: str | None
    # The engine of the last copy ("dovecot", "imap"; "" before any) and what it means for mail clients.
    engine: str
    identity: str
    # Older stored documents lack these two; a replay adds them.
    while_copying: NotRequired[str]
    switch: NotRequired[SwitchDoc | None]
    # Added by the queries, not stored: where a locked user's mail client is sent.
    redirect: NotRequired[str | None]


class RunDoc(TypedDict):
    state: str
    settings: dict[str, object]
    updated_at: str | None
    finished_at: str | None


class FleetProgress(TypedDict):
    accounts_done: int
    accounts_total: int
    messages: int
    bytes: int
    bytes_per_second: float
    eta_seconds: int | None


class EventRow(TypedDict):
    at: str
    version: int
    event: str
    data: dict[str, object]


def event_name(event: object) -> str:
    return type(event).__qualname__.rpartition(".")[2]


def new_account_doc(login: str, at: str) -> AccountDoc:
    return {
        "login": login,
        "state": "seen",
        "locked": False,
        "target_login": None,
        "aliases": [],
        "alias_conflicts": [],
        "folders": {},
        "messages": 0,
        "bytes": 0,
        "planned_messages": 0,
        "planned_bytes": 0,
        "skipped": 0,
        "attempts": 0,
        "logins": 0,
        "passwords_verified": 0,
        "passwords_rejected": 0,
        "last_protocol": None,
        "first_seen": at,
        "verified_at": None,
        "started_at": None,
        "completed_at": None,
        "updated_at": at,
        "error": None,
        "retryable": None,
        "post_script": None,
        "swept_messages": 0,
        "swept_at": None,
        "credential_destroyed_at": None,
        "passwords_only": False,
        "node": "",
        "lease_renewed_at": None,
        "engine": "",
        "identity": "",
        "while_copying": "",
        "switch": None,
    }


def new_run_doc() -> RunDoc:
    return {"state": "stopped", "settings": {}, "updated_at": None, "finished_at": None}


def apply_to_account(doc: AccountDoc, event: Aggregate.Event) -> None:
    """Update one account document in place with one event of its aggregate."""
    at = iso(event.timestamp)
    doc["updated_at"] = at
    if isinstance(event, Account.LoginSeen):
        doc["logins"] += 1
        doc["last_protocol"] = event.protocol
    elif isinstance(event, Account.PasswordVerified):
        # .get: a stored document may lack these counters; a replay adds them.
        doc["passwords_verified"] = doc.get("passwords_verified", 0) + 1
        doc["verified_at"] = doc["verified_at"] or at
        if doc["state"] == "seen":
            doc["state"] = "verified"
    elif isinstance(event, Account.PasswordRejected):
        doc["passwords_rejected"] = doc.get("passwords_rejected", 0) + 1
    elif isinstance(event, Account.AccountCreated):
        doc["state"] = "created"
        doc["target_login"] = event.target_login
        doc["aliases"] = list(event.aliases)
    elif isinstance(event, Account.AliasesRejected):
        doc["alias_conflicts"] = doc.get("alias_conflicts", []) + [dict(a) for a in event.aliases]
    elif isinstance(event, Account.MigrationStarted):
        _copy_started(doc, event, at)
    elif isinstance(event, Account.FolderCopied):
        _folder_copied(doc, event, at)
    elif isinstance(event, Account.CopyModeChosen):
        doc["while_copying"] = event.while_copying
    elif isinstance(event, Account.CopyCaughtUp):
        doc["state"] = "copied"
        doc["lease_renewed_at"] = at
    elif isinstance(event, Account.SwitchStarted):
        doc["state"] = "switching"
        doc["node"] = event.node
        doc["lease_renewed_at"] = at
    elif isinstance(event, Account.SwitchedOver):
        doc["switch"] = {"duration_seconds": event.duration_seconds, "sessions_closed": event.sessions_closed,
                         "delta_messages": event.delta_messages, "at": at}
    elif isinstance(event, Account.MigrationCompleted):
        doc["state"] = "completed"
        doc["completed_at"] = at
        doc["error"] = None
        doc["retryable"] = None
        doc["passwords_only"] = event.passwords_only
    elif isinstance(event, Account.MigrationFailed):
        doc["state"] = "failed"
        doc["error"] = event.reason
        doc["retryable"] = event.retryable
    elif isinstance(event, Account.PostScriptRan):
        doc["post_script"] = {
            "exit_status": event.exit_status,
            "duration_seconds": event.duration_seconds,
            "timed_out": event.timed_out,
            "at": at,
        }
    elif isinstance(event, Account.FinishSwept):
        doc["state"] = "swept"
        doc["swept_messages"] += event.messages
        doc["messages"] += event.messages
        doc["bytes"] += event.bytes
        doc["swept_at"] = at
    elif isinstance(event, Account.CredentialDestroyed):
        doc["credential_destroyed_at"] = at
    doc["locked"] = is_locked(doc["state"], doc.get("while_copying", ""))


IDENTITY_KEPT = "identity kept: UIDs and UIDVALIDITY as on the old server"
IDENTITY_LOST = "new UIDs: IMAP clients re-download, POP3 clients may fetch again"


def identity_text(engine: str) -> str:
    """What the copy engine means for the users' mail programs."""
    return IDENTITY_KEPT if engine == "dovecot" else IDENTITY_LOST


def _new_folder(target: str, planned_messages: int) -> FolderDoc:
    return {"target": target, "messages": 0, "bytes": 0, "skipped": 0, "planned_messages": planned_messages,
            "done": False, "uidvalidity": None, "highest_uid": 0}


def _copy_started(doc: AccountDoc, event: Account.MigrationStarted, at: str) -> None:
    # The switch's final delta is a copy pass too; the account stays switching.
    if doc["state"] != "switching":
        doc["state"] = "copying"
    doc["started_at"] = doc["started_at"] or at
    doc["attempts"] = event.attempt
    doc["planned_messages"] = event.total_messages
    doc["planned_bytes"] = event.total_bytes
    doc["error"] = None
    doc["retryable"] = None
    doc["node"] = event.node
    doc["lease_renewed_at"] = at
    doc["engine"] = event.engine
    doc["identity"] = identity_text(event.engine)
    for planned in event.folders:
        doc["folders"].setdefault(
            planned["source"], _new_folder(planned.get("target", planned["source"]), planned.get("messages", 0)))


def _folder_copied(doc: AccountDoc, event: Account.FolderCopied, at: str) -> None:
    folder = doc["folders"].setdefault(event.source_folder, _new_folder(event.target_folder, 0))
    folder["target"] = event.target_folder
    folder["uidvalidity"] = event.uidvalidity
    folder["highest_uid"] = event.highest_uid
    folder["messages"] += event.messages
    folder["bytes"] += event.bytes
    folder["skipped"] += len(event.skipped)
    folder["done"] = event.done
    doc["messages"] += event.messages
    doc["bytes"] += event.bytes
    doc["skipped"] += len(event.skipped)
    doc["lease_renewed_at"] = at


def apply_to_run(doc: RunDoc, event: Aggregate.Event) -> None:
    """Update the run document in place with one event of the run aggregate."""
    at = iso(event.timestamp)
    doc["updated_at"] = at
    if isinstance(event, Run.Configured):
        doc["settings"] = dict(event.settings)
    elif isinstance(event, Run.Started):
        doc["state"] = "started"
    elif isinstance(event, Run.Stopped):
        doc["state"] = "stopped"
    elif isinstance(event, Run.FinishRequested):
        doc["state"] = "finishing"
    elif isinstance(event, Run.FinishCompleted):
        doc["state"] = "finished"
        doc["finished_at"] = at


def expired_leases(
    docs: Sequence[AccountDoc], node: str, now: datetime, lease_seconds: float
) -> list[str]:
    """Logins of copying or failed accounts whose lease, held by a node other than `node`, ran out at `now`.

    What a node may take over; the aggregate decides for sure when the claim is recorded.
    """
    found: list[str] = []
    for doc in docs:
        renewed = doc.get("lease_renewed_at")
        if doc["state"] not in LEASED_STATES or renewed is None or doc.get("node", "") == node:
            continue
        if (now - datetime.fromisoformat(renewed)).total_seconds() >= lease_seconds:
            found.append(doc["login"])
    return found


def iso(timestamp: datetime) -> str:
    return timestamp.isoformat(timespec="microseconds")


def fleet_progress(docs: Sequence[AccountDoc]) -> FleetProgress:
    """The whole run's progress from the account documents: done/total, copied, average rate, ETA.

    The rate is what was copied since the first copy started, up to the last recorded change: an
    average over the run, the same on every node and after every replay.
    """
    done = sum(doc["state"] in SETTLED_STATES for doc in docs)
    messages = sum(int(doc["messages"]) for doc in docs)
    size = sum(int(doc["bytes"]) for doc in docs)
    planned = sum(max(int(doc.get("planned_bytes", 0)), int(doc["bytes"])) for doc in docs if doc["state"] not in SETTLED_STATES)
    copied_pending = sum(int(doc["bytes"]) for doc in docs if doc["state"] not in SETTLED_STATES)
    starts = [started for doc in docs if (started := doc.get("started_at"))]
    ends = [doc["updated_at"] for doc in docs if doc.get("started_at")]
    seconds = (datetime.fromisoformat(max(ends)) - datetime.fromisoformat(min(starts))).total_seconds() if starts else 0.0
    rate = size / seconds if seconds > 0 else 0.0
    left = max(0, planned - copied_pending)
    return {
        "accounts_done": done,
        "accounts_total": len(docs),
        "messages": messages,
        "bytes": size,
        "bytes_per_second": round(rate, 1),
        "eta_seconds": round(left / rate) if rate > 0 and left else (0 if not left else None),
    }


def event_row(event: Aggregate.Event) -> EventRow:
    """One event as the auditor reads it: when, which version, what, and its payload."""
    skip = {"originator_id", "originator_version", "timestamp", "originator_topic"}
    data = {k: v for k, v in vars(event).items() if k not in skip}
    return {
        "at": event.timestamp.isoformat(),
        "version": event.originator_version,
        "event": event_name(event),
        "data": json.loads(json.dumps(data, default=str)),
    }
