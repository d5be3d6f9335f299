"""Folding events into the read models: pure functions over plain dicts.

An account document is what `status`, `show` and the console show of one
account; the run document likewise for the run. Both are rebuilt exactly by
replaying the same events through the same functions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, NotRequired, TypedDict

from eventsourcing.domain import Aggregate

from mailmigrator.domain.model import AccountMigration as Account
from mailmigrator.domain.model import MigrationRun as Run
from mailmigrator.domain.states import (
    ACCOUNT_TRANSITIONS,
    LEASED_STATES,
    NOT_SEEN_STATES,
    OFF_ROSTER_STATES,
    SETTLED_STATES,
    is_locked,
    next_state,
)


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


class FiltersDoc(TypedDict):
    """The account's Sieve scripts as moved: names, sizes, hashes; refused ones with the server's reason."""

    scripts: list[dict[str, object]]
    old_active: str
    active: str
    refused: list[dict[str, object]]
    # Why nothing moved ("" when the scripts were moved): a server offers no ManageSieve.
    not_offered: str
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
    filters: NotRequired[FiltersDoc | None]
    on_roster: NotRequired[bool]
    roster_added_at: NotRequired[str | None]
    password_pending: NotRequired[bool]
    # Pre-copy: when the account was prepared, and when a pass last caught up with the old server.
    precopied_at: NotRequired[str | None]
    precopy_refreshed_at: NotRequired[str | None]
    verify: NotRequired[dict[str, Any] | None]
    first_login_at: NotRequired[str | None]
    # Skipped messages by reason, as the report lists them.
    skipped_reasons: NotRequired[dict[str, int]]
    # Added by the queries, not stored: where a locked user's mail client is sent.
    redirect: NotRequired[str | None]


class RunDoc(TypedDict):
    state: str
    settings: dict[str, object]
    updated_at: str | None
    finished_at: str | None


class AccountRow(TypedDict):
    """One account as lists show it: columns of the account table, no document."""

    login: str
    state: str
    locked: bool
    folders: int
    messages: int
    bytes: int
    planned_bytes: int
    started_at: str | None
    completed_at: str | None
    error: str | None
    updated_at: str
    node: str


class LeaseRow(TypedDict):
    login: str
    state: str
    node: str
    lease_renewed_at: str | None


class StateTotals(TypedDict):
    """Counts and sums over the accounts of one state; planned figures count at least what was copied."""

    state: str
    accounts: int
    locked: int
    messages: int
    bytes: int
    planned_messages: int
    planned_bytes: int
    skipped: int
    logins: int
    passwords_verified: int
    passwords_rejected: int
    retryable: int
    scripts_failed: int
    scripts_timed_out: int
    on_roster: int
    first_started: str | None
    last_update: str | None  # the latest change of an account whose copy started


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


def new_account_doc(login: str, at: str, state: str = "seen") -> AccountDoc:
    return {
        "login": login,
        "state": state,
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
        "filters": None,
        "on_roster": False,
        "roster_added_at": None,
        "password_pending": False,
        "precopied_at": None,
        "precopy_refreshed_at": None,
        "verify": None,
    }


def new_run_doc() -> RunDoc:
    return {"state": "stopped", "settings": {}, "updated_at": None, "finished_at": None}


def apply_to_account(doc: AccountDoc, event: Aggregate.Event, at: str | None = None) -> None:
    """Update one account document in place with one event of its aggregate (`at`: its timestamp, `iso`)."""
    at = at or iso(event.timestamp)
    doc["updated_at"] = at
    fold = _ACCOUNT_FOLDS.get(type(event))
    if fold is None:
        fold = _fold_for(type(event))
    before = doc["state"]
    fold(doc, event, at)
    # The state follows the aggregate's own table; the folds keep the details.
    doc["state"] = next_state(ACCOUNT_TRANSITIONS, before, event_name(event)) or doc["state"]
    doc["locked"] = is_locked(doc["state"], doc.get("while_copying", ""))


def _login_seen(doc: AccountDoc, event: Account.LoginSeen, at: str) -> None:
    doc["logins"] += 1
    doc["last_protocol"] = event.protocol
    doc["first_login_at"] = doc.get("first_login_at") or at


def _password_verified(doc: AccountDoc, event: Account.PasswordVerified, at: str) -> None:
    # .get: a stored document may lack these counters; a replay adds them.
    doc["passwords_verified"] = doc.get("passwords_verified", 0) + 1
    doc["verified_at"] = doc["verified_at"] or at
    if doc["state"] == "seen":
        doc["state"] = "verified"


def _password_rejected(doc: AccountDoc, event: Account.PasswordRejected, at: str) -> None:
    doc["passwords_rejected"] = doc.get("passwords_rejected", 0) + 1


def _account_created(doc: AccountDoc, event: Account.AccountCreated, at: str) -> None:
    doc["state"] = "created"
    doc["target_login"] = event.target_login
    doc["aliases"] = list(event.aliases)


def _aliases_rejected(doc: AccountDoc, event: Account.AliasesRejected, at: str) -> None:
    doc["alias_conflicts"] = doc.get("alias_conflicts", []) + [dict(a) for a in event.aliases]


def _copy_mode_chosen(doc: AccountDoc, event: Account.CopyModeChosen, at: str) -> None:
    doc["while_copying"] = event.while_copying


def _copy_caught_up(doc: AccountDoc, event: Account.CopyCaughtUp, at: str) -> None:
    doc["state"] = "copied"
    doc["lease_renewed_at"] = at
    if doc.get("password_pending"):
        doc["precopy_refreshed_at"] = at


def _switch_started(doc: AccountDoc, event: Account.SwitchStarted, at: str) -> None:
    doc["state"] = "switching"
    doc["node"] = event.node
    doc["lease_renewed_at"] = at


def _switched_over(doc: AccountDoc, event: Account.SwitchedOver, at: str) -> None:
    doc["switch"] = {"duration_seconds": event.duration_seconds, "sessions_closed": event.sessions_closed,
                     "delta_messages": event.delta_messages, "at": at}


def _migration_completed(doc: AccountDoc, event: Account.MigrationCompleted, at: str) -> None:
    doc["state"] = "completed"
    doc["completed_at"] = at
    doc["error"] = None
    doc["retryable"] = None
    doc["passwords_only"] = event.passwords_only


def _migration_failed(doc: AccountDoc, event: Account.MigrationFailed, at: str) -> None:
    doc["state"] = "failed"
    doc["error"] = event.reason
    doc["retryable"] = event.retryable


def _post_script_ran(doc: AccountDoc, event: Account.PostScriptRan, at: str) -> None:
    doc["post_script"] = {
        "exit_status": event.exit_status,
        "duration_seconds": event.duration_seconds,
        "timed_out": event.timed_out,
        "at": at,
    }


def _finish_swept(doc: AccountDoc, event: Account.FinishSwept, at: str) -> None:
    doc["state"] = "swept"
    doc["swept_messages"] += event.messages
    doc["messages"] += event.messages
    doc["bytes"] += event.bytes
    doc["swept_at"] = at


def _credential_destroyed(doc: AccountDoc, event: Account.CredentialDestroyed, at: str) -> None:
    doc["credential_destroyed_at"] = at


def _filters_copied(doc: AccountDoc, event: Account.FiltersCopied, at: str) -> None:
    doc["filters"] = {"scripts": [dict(s) for s in event.scripts], "old_active": event.old_active,
                      "active": event.active, "refused": [dict(r) for r in event.refused], "not_offered": "",
                      "at": at}


def _filters_not_copied(doc: AccountDoc, event: Account.FiltersNotCopied, at: str) -> None:
    doc["filters"] = {"scripts": [], "old_active": "", "active": "",
                      "refused": [dict(s) | {"reason": event.reason} for s in event.scripts],
                      "not_offered": event.reason, "at": at}


def _expected(doc: AccountDoc, event: Account.Expected, at: str) -> None:
    doc["on_roster"] = True
    doc["roster_added_at"] = doc.get("roster_added_at") or at


def _removed_from_roster(doc: AccountDoc, event: Account.RemovedFromRoster, at: str) -> None:
    doc["on_roster"] = False


def _account_prepared(doc: AccountDoc, event: Account.AccountPrepared, at: str) -> None:
    doc["target_login"] = event.target_login
    doc["password_pending"] = True
    doc["precopied_at"] = at


def _password_set(doc: AccountDoc, event: Account.PasswordSet, at: str) -> None:
    doc["password_pending"] = False


def _mailboxes_compared(doc: AccountDoc, event: Account.MailboxesCompared, at: str) -> None:
    doc["verify"] = {"equal": event.equal, "differences": event.differences, "examples": list(event.examples),
                     "node": event.node, "at": at}


def _no_change(doc: AccountDoc, event: Aggregate.Event, at: str) -> None:
    pass


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
    if event.skipped:
        reasons = doc.setdefault("skipped_reasons", {})
        for message in event.skipped:
            reasons[message["reason"]] = reasons.get(message["reason"], 0) + 1
    doc["lease_renewed_at"] = at


# What each event class changes in an account document (a subclass folds as its nearest listed base).
_ACCOUNT_FOLDS: dict[type, Callable[[AccountDoc, Any, str], None]] = {
    Account.LoginSeen: _login_seen,
    Account.PasswordVerified: _password_verified,
    Account.PasswordRejected: _password_rejected,
    Account.AccountCreated: _account_created,
    Account.AliasesRejected: _aliases_rejected,
    Account.MigrationStarted: _copy_started,
    Account.FolderCopied: _folder_copied,
    Account.CopyModeChosen: _copy_mode_chosen,
    Account.CopyCaughtUp: _copy_caught_up,
    Account.SwitchStarted: _switch_started,
    Account.SwitchedOver: _switched_over,
    Account.MigrationCompleted: _migration_completed,
    Account.MigrationFailed: _migration_failed,
    Account.PostScriptRan: _post_script_ran,
    Account.FinishSwept: _finish_swept,
    Account.CredentialDestroyed: _credential_destroyed,
    Account.FiltersCopied: _filters_copied,
    Account.FiltersNotCopied: _filters_not_copied,
    Account.Expected: _expected,
    Account.RemovedFromRoster: _removed_from_roster,
    Account.AccountPrepared: _account_prepared,
    Account.PasswordSet: _password_set,
    Account.MailboxesCompared: _mailboxes_compared,
}


def _fold_for(cls: type) -> Callable[[AccountDoc, Any, str], None]:
    fold = next((_ACCOUNT_FOLDS[base] for base in cls.__mro__ if base in _ACCOUNT_FOLDS), _no_change)
    _ACCOUNT_FOLDS[cls] = fold
    return fold


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
    rows: Sequence[LeaseRow], node: str, now: datetime, lease_seconds: float
) -> list[str]:
    """Logins of copying or failed accounts whose lease, held by a node other than `node`, ran out at `now`.

    What a node may take over; the aggregate decides for sure when the claim is recorded.
    """
    found: list[str] = []
    for row in rows:
        renewed = row.get("lease_renewed_at")
        if row["state"] not in LEASED_STATES or renewed is None or row.get("node", "") == node:
            continue
        if (now - datetime.fromisoformat(renewed)).total_seconds() >= lease_seconds:
            found.append(row["login"])
    return found


def iso(timestamp: datetime) -> str:
    return timestamp.isoformat(timespec="microseconds")


def script_outcome(script: PostScriptDoc | None) -> str:
    """The post-migrate script's last run in one word: "" (none), "ok", "failed" or "timed out"."""
    if script is None:
        return ""
    if script["timed_out"]:
        return "timed out"
    return "failed" if script["exit_status"] != 0 else "ok"


def state_totals(docs: Iterable[AccountDoc]) -> list[StateTotals]:
    """The account table's counts and sums by state, from documents (the SQL query's definition)."""
    by_state: dict[str, StateTotals] = {}
    for doc in docs:
        t = by_state.get(doc["state"])
        if t is None:
            t = by_state[doc["state"]] = {
                "state": doc["state"], "accounts": 0, "locked": 0, "messages": 0, "bytes": 0,
                "planned_messages": 0, "planned_bytes": 0, "skipped": 0, "logins": 0, "passwords_verified": 0,
                "passwords_rejected": 0, "retryable": 0, "scripts_failed": 0, "scripts_timed_out": 0,
                "on_roster": 0, "first_started": None, "last_update": None}
        t["accounts"] += 1
        t["locked"] += int(doc["locked"])
        t["messages"] += doc["messages"]
        t["bytes"] += doc["bytes"]
        t["planned_messages"] += max(doc.get("planned_messages", 0), doc["messages"])
        t["planned_bytes"] += max(doc.get("planned_bytes", 0), doc["bytes"])
        t["skipped"] += doc.get("skipped", 0)
        t["logins"] += doc.get("logins", 0)
        t["passwords_verified"] += doc.get("passwords_verified", 0)
        t["passwords_rejected"] += doc.get("passwords_rejected", 0)
        t["retryable"] += int(doc.get("retryable") is True)
        outcome = script_outcome(doc.get("post_script"))
        t["scripts_failed"] += int(outcome == "failed")
        t["scripts_timed_out"] += int(outcome == "timed out")
        t["on_roster"] += int(doc.get("on_roster", False))
        if started := doc.get("started_at"):
            first, last = t["first_started"], t["last_update"]
            t["first_started"] = started if first is None else min(first, started)
            t["last_update"] = doc["updated_at"] if last is None else max(last, doc["updated_at"])
    return [by_state[state] for state in sorted(by_state)]


def fleet_progress(totals: Sequence[StateTotals]) -> FleetProgress:
    """The whole run's progress from the totals by state: done/total, copied, average rate, ETA.

    The rate is what was copied since the first copy started, up to the last recorded change: an
    average over the run, the same on every node and after every replay.
    """
    totals = [t for t in totals if t["state"] not in OFF_ROSTER_STATES]
    settled = [t for t in totals if t["state"] in SETTLED_STATES]
    pending = [t for t in totals if t["state"] not in SETTLED_STATES]
    size = sum(t["bytes"] for t in totals)
    planned = sum(t["planned_bytes"] for t in pending)
    copied_pending = sum(t["bytes"] for t in pending)
    starts = [started for t in totals if (started := t["first_started"])]
    ends = [last for t in totals if (last := t["last_update"])]
    seconds = (datetime.fromisoformat(max(ends)) - datetime.fromisoformat(min(starts))).total_seconds() if starts else 0.0
    rate = size / seconds if seconds > 0 else 0.0
    left = max(0, planned - copied_pending)
    return {
        "accounts_done": sum(t["accounts"] for t in settled),
        "accounts_total": sum(t["accounts"] for t in totals),
        "messages": sum(t["messages"] for t in totals),
        "bytes": size,
        "bytes_per_second": round(rate, 1),
        "eta_seconds": round(left / rate) if rate > 0 and left else (0 if not left else None),
    }


class RosterProgress(TypedDict):
    accounts: int
    done: int
    in_progress: int
    failed: int
    not_seen: int


def roster_progress(totals: Sequence[StateTotals]) -> RosterProgress | None:
    """The roster's accounts by how far they are, from the totals by state; None when no roster was imported.

    Not seen counts the accounts whose owner never logged in, pre-copied or not; withdrawn ones are off the roster.
    """
    counted = [t for t in totals if t["state"] not in OFF_ROSTER_STATES]
    accounts = sum(t["on_roster"] for t in counted)
    if not accounts:
        return None
    done = sum(t["on_roster"] for t in counted if t["state"] in SETTLED_STATES)
    failed = sum(t["on_roster"] for t in counted if t["state"] == "failed")
    not_seen = sum(t["on_roster"] for t in counted if t["state"] in NOT_SEEN_STATES)
    return {"accounts": accounts, "done": done, "in_progress": accounts - done - failed - not_seen,
            "failed": failed, "not_seen": not_seen}


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
