"""The human-readable migration log: one line per event, in words an admin reads at a glance."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from mailmigrator.projections.accounts import event_name


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1000
    return f"{size:,.1f} TB"  # pragma: no cover


def stamp(timestamp: datetime) -> str:
    return timestamp.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def account_lines(event: Any, doc: dict[str, Any]) -> list[str]:
    """The log lines for one account event; `doc` is the account after the event."""
    name = event_name(event)
    who = doc["login"]
    text: list[str] = []
    if name == "Registered":
        text.append("first seen")
    elif name == "LoginSeen":
        where = f" on {event.local_address}" if event.local_address else ""
        text.append(f"{event.protocol.upper()} login from {event.client_address}{where}")
    elif name == "PasswordVerified":
        text.append(f"password verified against the old server ({event.method})")
    elif name == "PasswordRejected":
        text.append(f"password rejected by the old server: {event.reason}")
    elif name == "AccountCreated":
        aliases = f", aliases {', '.join(event.aliases)}" if event.aliases else ""
        text.append(f"account created on the new server as {event.target_login} ({event.provisioner}){aliases}")
    elif name == "AliasesRejected":
        for alias in event.aliases:
            text.append(f"alias {alias['address']} NOT applied: {alias['reason']}; "
                        "add it to the alias map by hand if it belongs to this account")
    elif name == "MigrationStarted":
        verb = "copy started" if event.attempt == 1 else f"copy resumed (attempt {event.attempt})"
        text.append(
            f"{verb}: {len(event.folders)} folders, {event.total_messages:,} messages, "
            f"{human_bytes(event.total_bytes)}"
        )
    elif name == "FolderCopied":
        what = "copied" if event.done else "checkpoint"
        line = f'folder "{event.source_folder}" {what}: {event.messages:,} messages, {human_bytes(event.bytes)}'
        if event.target_folder != event.source_folder:
            line += f' (as "{event.target_folder}")'
        text.append(line)
        for skipped in event.skipped:
            text.append(
                f'message UID {skipped.get("uid")} in "{event.source_folder}" NOT copied: '
                f'{skipped.get("reason")}'
            )
    elif name == "MigrationCompleted":
        if event.passwords_only:
            text.append("migration completed: password set, no mail copied (passwords only)")
        else:
            rate = event.bytes / event.duration_seconds if event.duration_seconds > 0 else 0.0
            text.append(
                f"migration completed: {event.folders} folders, {event.messages:,} messages, "
                f"{human_bytes(event.bytes)} in {event.duration_seconds:,.1f} s "
                f"({human_bytes(int(rate))}/s)"
            )
    elif name == "MigrationFailed":
        then = (
            "it will be retried automatically"
            if event.retryable
            else "fix the cause, then run `mailmigrator migrate --user` for this account"
        )
        text.append(f"migration FAILED: {event.reason}; {then}")
    elif name == "PostScriptRan":
        if event.timed_out:
            text.append(f"post-migrate script timed out after {event.duration_seconds:.1f} s")
        elif event.exit_status != 0:
            text.append(f"post-migrate script FAILED with exit status {event.exit_status}")
        else:
            text.append(f"post-migrate script ran ({event.duration_seconds:.1f} s)")
    elif name == "FinishSwept":
        if event.messages:
            per = ", ".join(f'"{k}" {v:,}' for k, v in sorted(event.folders.items()) if v)
            text.append(f"finish sweep copied {event.messages:,} late messages ({per})")
        else:
            text.append("finish sweep: no new mail on the old server")
    elif name == "CredentialDestroyed":
        text.append(f"stored password destroyed ({event.reason})")
    else:
        text.append(name)
    return [f"{stamp(event.timestamp)} {who}  {t}" for t in text]


def run_lines(event: Any) -> list[str]:
    name = event_name(event)
    text = {
        "Opened": None,
        "Configured": "settings recorded",
        "Started": "MIGRATION STARTED",
        "Stopped": "MIGRATION STOPPED: logins pass through to the old server",
        "FinishRequested": "FINISH MIGRATION requested",
        "FinishClaimed": f"finish work taken on by {getattr(event, 'node', '')}",
    }.get(name, "")
    if name == "FinishCompleted":
        text = f"FINISH MIGRATION completed: {event.accounts:,} accounts swept, {event.messages:,} late messages copied"
    if text is None:
        return []
    by = getattr(event, "by", "")
    suffix = f" (by {by})" if by else ""
    return [f"{stamp(event.timestamp)} -  {text or name}{suffix}"]
