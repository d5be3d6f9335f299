"""Folding events into the read models: pure functions over plain dicts.

An account document is what `status`, `show` and the console show of one
account; the run document likewise for the run. Both are rebuilt exactly by
replaying the same events through the same functions.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from mailmigrator.domain.states import LOCKED_STATES


def event_name(event: Any) -> str:
    return type(event).__qualname__.rpartition(".")[2]


def new_account_doc(login: str, at: str) -> dict[str, Any]:
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
    }


def new_run_doc() -> dict[str, Any]:
    return {"state": "stopped", "settings": {}, "updated_at": None, "finished_at": None}


def apply_to_account(doc: dict[str, Any], event: Any) -> None:
    """Update one account document in place with one event of its aggregate."""
    name = event_name(event)
    at = iso(event.timestamp)
    doc["updated_at"] = at
    if name == "LoginSeen":
        doc["logins"] += 1
        doc["last_protocol"] = event.protocol
    elif name == "PasswordVerified":
        # .get: a stored document may lack these counters; a replay adds them.
        doc["passwords_verified"] = doc.get("passwords_verified", 0) + 1
        doc["verified_at"] = doc["verified_at"] or at
        if doc["state"] == "seen":
            doc["state"] = "verified"
    elif name == "PasswordRejected":
        doc["passwords_rejected"] = doc.get("passwords_rejected", 0) + 1
    elif name == "AccountCreated":
        doc["state"] = "created"
        doc["target_login"] = event.target_login
        doc["aliases"] = list(event.aliases)
    elif name == "AliasesRejected":
        doc["alias_conflicts"] = doc.get("alias_conflicts", []) + [dict(a) for a in event.aliases]
    elif name == "MigrationStarted":
        doc["state"] = "copying"
        doc["started_at"] = doc["started_at"] or at
        doc["attempts"] = event.attempt
        doc["planned_messages"] = event.total_messages
        doc["planned_bytes"] = event.total_bytes
        doc["error"] = None
        doc["retryable"] = None
        doc["node"] = event.node
        doc["lease_renewed_at"] = at
        for planned in event.folders:
            doc["folders"].setdefault(
                planned["source"],
                {
                    "target": planned.get("target", planned["source"]),
                    "messages": 0,
                    "bytes": 0,
                    "skipped": 0,
                    "planned_messages": planned.get("messages", 0),
                    "done": False,
                    "uidvalidity": None,
                    "highest_uid": 0,
                },
            )
    elif name == "FolderCopied":
        folder = doc["folders"].setdefault(
            event.source_folder,
            {"target": event.target_folder, "messages": 0, "bytes": 0, "skipped": 0,
             "planned_messages": 0, "done": False, "uidvalidity": None, "highest_uid": 0},
        )
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
    elif name == "MigrationCompleted":
        doc["state"] = "completed"
        doc["completed_at"] = at
        doc["error"] = None
        doc["retryable"] = None
        doc["passwords_only"] = event.passwords_only
    elif name == "MigrationFailed":
        doc["state"] = "failed"
        doc["error"] = event.reason
        doc["retryable"] = event.retryable
    elif name == "PostScriptRan":
        doc["post_script"] = {
            "exit_status": event.exit_status,
            "duration_seconds": event.duration_seconds,
            "timed_out": event.timed_out,
            "at": at,
        }
    elif name == "FinishSwept":
        doc["state"] = "swept"
        doc["swept_messages"] += event.messages
        doc["messages"] += event.messages
        doc["bytes"] += event.bytes
        doc["swept_at"] = at
    elif name == "CredentialDestroyed":
        doc["credential_destroyed_at"] = at
    doc["locked"] = doc["state"] in LOCKED_STATES


def apply_to_run(doc: dict[str, Any], event: Any) -> None:
    """Update the run document in place with one event of the run aggregate."""
    name = event_name(event)
    at = iso(event.timestamp)
    doc["updated_at"] = at
    if name == "Configured":
        doc["settings"] = dict(event.settings)
    elif name == "Started":
        doc["state"] = "started"
    elif name == "Stopped":
        doc["state"] = "stopped"
    elif name == "FinishRequested":
        doc["state"] = "finishing"
    elif name == "FinishCompleted":
        doc["state"] = "finished"
        doc["finished_at"] = at


def expired_leases(
    docs: list[dict[str, Any]], node: str, now: datetime, lease_seconds: float
) -> list[str]:
    """Logins of copying or failed accounts whose lease, held by a node other than `node`, ran out at `now`.

    What a node may take over; the aggregate decides for sure when the claim is recorded.
    """
    found = []
    for doc in docs:
        renewed = doc.get("lease_renewed_at")
        if doc["state"] not in ("copying", "failed") or renewed is None or doc.get("node", "") == node:
            continue
        if (now - datetime.fromisoformat(renewed)).total_seconds() >= lease_seconds:
            found.append(doc["login"])
    return found


def iso(timestamp: datetime) -> str:
    return timestamp.isoformat(timespec="microseconds")


def fleet_progress(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole run's progress from the account documents: done/total, copied, average rate, ETA.

    The rate is what was copied since the first copy started, up to the last recorded change: an
    average over the run, the same on every node and after every replay.
    """
    done = sum(doc["state"] in ("completed", "swept") for doc in docs)
    messages = sum(int(doc["messages"]) for doc in docs)
    size = sum(int(doc["bytes"]) for doc in docs)
    planned = sum(max(int(doc.get("planned_bytes", 0)), int(doc["bytes"])) for doc in docs if doc["state"] not in ("completed", "swept"))
    copied_pending = sum(int(doc["bytes"]) for doc in docs if doc["state"] not in ("completed", "swept"))
    starts = [doc["started_at"] for doc in docs if doc.get("started_at")]
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


def event_row(event: Any) -> dict[str, Any]:
    """One event as the auditor reads it: when, which version, what, and its payload."""
    skip = {"originator_id", "originator_version", "timestamp", "originator_topic"}
    data = {k: v for k, v in vars(event).items() if k not in skip}
    return {
        "at": event.timestamp.isoformat(),
        "version": event.originator_version,
        "event": event_name(event),
        "data": json.loads(json.dumps(data, default=str)),
    }
