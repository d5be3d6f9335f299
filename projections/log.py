"""The human-readable migration log: one line per event, in words an admin reads at a glance."""

from __future__ import annotations

from datetime import datetime, timezone

from eventsourcing.domain import Aggregate

from mailmigrator.domain.model import AccountMigration as Account
from mailmigrator.domain.model import MigrationRun as Run
from mailmigrator.projections.accounts import AccountDoc, event_name, identity_text


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1000
    return f"{size:,.1f} TB"  # pragma: no cover


def stamp(timestamp: datetime) -> str:
    return timestamp.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def stamp_of(at: str) -> str:
    """`stamp` of a timestamp given as `iso` writes it."""
    if at.endswith("+00:00"):
        return f"{at[:10]} {at[11:19]}"
    return stamp(datetime.fromisoformat(at))


def account_lines(event: Aggregate.Event, doc: AccountDoc, at: str | None = None) -> list[str]:
    """The log lines for one account event; `doc` is the account after the event, `at` the event's `iso` time."""
    who = doc["login"]
    text: list[str] = []
    if isinstance(event, Account.Registered):
        # A roster account is first seen at its first login; its Expected event follows and says when it was added.
        if event.initial_state != "expected":
            text.append("first seen")
    elif isinstance(event, Account.Expected):
        text.append(f"added to the roster ({event.source})")
    elif isinstance(event, Account.RemovedFromRoster):
        withdrawn = "; never seen, no longer counted" if doc["state"] == "withdrawn" else ""
        text.append(f"taken off the roster ({event.source}){withdrawn}")
    elif isinstance(event, Account.LoginSeen):
        where = f" on {event.local_address}" if event.local_address else ""
        text.append(f"{event.protocol.upper()} login from {event.client_address}{where}")
    elif isinstance(event, Account.PasswordVerified):
        text.append(f"password verified against the old server ({event.method})")
    elif isinstance(event, Account.PasswordRejected):
        text.append(f"password rejected by the old server: {event.reason}")
    elif isinstance(event, Account.AccountCreated):
        aliases = f", aliases {', '.join(event.aliases)}" if event.aliases else ""
        text.append(f"account created on the new server as {event.target_login} ({event.provisioner}){aliases}")
    elif isinstance(event, Account.AliasesRejected):
        for alias in event.aliases:
            text.append(f"alias {alias['address']} NOT applied: {alias['reason']}; "
                        "add it to the alias map by hand if it belongs to this account")
    elif isinstance(event, Account.MigrationStarted):
        verb = "copy started" if event.attempt == 1 else f"copy resumed (attempt {event.attempt})"
        text.append(
            f"{verb}: {len(event.folders)} folders, {event.total_messages:,} messages, "
            f"{human_bytes(event.total_bytes)}; {event.engine} engine, {identity_text(event.engine)}"
        )
    elif isinstance(event, Account.FolderCopied):
        text += _folder_lines(event)
    elif isinstance(event, Account.MigrationCompleted):
        text.append(_completed_line(event))
    elif isinstance(event, Account.CopyModeChosen):
        text.append(_copy_mode_line(event.while_copying))
    elif isinstance(event, Account.CopyCaughtUp):
        text.append(f"first copy done: {event.folders} folders, {event.messages:,} messages, "
                    f"{human_bytes(event.bytes)} in {event.duration_seconds:,.1f} s; the switch follows")
    elif isinstance(event, Account.SwitchStarted):
        text.append(f"switch started on {event.node or 'this node'}: old-server sessions closed, "
                    "final delta copying, logins wait")
    elif isinstance(event, Account.SwitchedOver):
        text.append(f"SWITCHED OVER to the new server in {event.duration_seconds:.2f} s: "
                    f"{event.sessions_closed} old-server sessions closed, {event.delta_messages:,} messages "
                    "in the final delta")
    elif isinstance(event, Account.MigrationFailed):
        then = (
            "it will be retried automatically"
            if event.retryable
            else "fix the cause, then run `mailmigrator migrate --user` for this account"
        )
        text.append(f"migration FAILED: {event.reason}; {then}")
    elif isinstance(event, Account.PostScriptRan):
        text.append(_script_line(event))
    elif isinstance(event, Account.FinishSwept):
        text.append(_sweep_line(event))
    elif isinstance(event, Account.CredentialDestroyed):
        text.append(f"stored password destroyed ({event.reason})")
    elif isinstance(event, Account.FiltersCopied):
        text += _filter_lines(event)
    elif isinstance(event, Account.FiltersNotCopied):
        names = ", ".join(f'"{s["name"]}"' for s in event.scripts)
        text.append(f"sieve scripts NOT moved: {event.reason}" + (f"; left on the old server: {names}" if names
                                                                    else ""))
    else:
        text.append(event_name(event))
    when = stamp_of(at) if at is not None else stamp(event.timestamp)
    return [f"{when} {who}  {t}" for t in text]


def _folder_lines(event: Account.FolderCopied) -> list[str]:
    what = "copied" if event.done else "checkpoint"
    line = f'folder "{event.source_folder}" {what}: {event.messages:,} messages, {human_bytes(event.bytes)}'
    if event.target_folder != event.source_folder:
        line += f' (as "{event.target_folder}")'
    return [line] + [f'message UID {skipped.get("uid")} in "{event.source_folder}" NOT copied: '
                     f'{skipped.get("reason")}' for skipped in event.skipped]


def _filter_lines(event: Account.FiltersCopied) -> list[str]:
    names = ", ".join(f'"{s["name"]}" ({human_bytes(s["bytes"])})' for s in event.scripts) or "none"
    if event.active:
        active = f'; "{event.active}" active'
    elif event.old_active:
        active = f'; NONE active: "{event.old_active}", active on the old server, was refused'
    else:
        active = "; none active"
    return [f"sieve scripts moved: {names}{active}"] + [
        f'sieve script "{r["name"]}" NOT moved: the new server refused it: {r["reason"]}' for r in event.refused]


def _completed_line(event: Account.MigrationCompleted) -> str:
    if event.passwords_only:
        return "migration completed: password set, no mail copied (passwords only)"
    rate = event.bytes / event.duration_seconds if event.duration_seconds > 0 else 0.0
    return (f"migration completed: {event.folders} folders, {event.messages:,} messages, "
            f"{human_bytes(event.bytes)} in {event.duration_seconds:,.1f} s ({human_bytes(int(rate))}/s)")


def _copy_mode_line(while_copying: str) -> str:
    if while_copying == "old-server":
        return "while the mail copies, the user keeps working on the old server"
    if while_copying == "refuse":
        return "while the mail copies, logins are refused"
    return "while the mail copies, the user sees the notice mailbox"


def _script_line(event: Account.PostScriptRan) -> str:
    if event.timed_out:
        return f"post-migrate script timed out after {event.duration_seconds:.1f} s"
    if event.exit_status != 0:
        return f"post-migrate script FAILED with exit status {event.exit_status}"
    return f"post-migrate script ran ({event.duration_seconds:.1f} s)"


def _sweep_line(event: Account.FinishSwept) -> str:
    if not event.messages:
        return "finish sweep: no new mail on the old server"
    per = ", ".join(f'"{k}" {v:,}' for k, v in sorted(event.folders.items()) if v)
    return f"finish sweep copied {event.messages:,} late messages ({per})"


def run_lines(event: Aggregate.Event) -> list[str]:
    by = ""
    if isinstance(event, Run.Opened):
        return []
    if isinstance(event, Run.Configured):
        text = "settings recorded"
    elif isinstance(event, Run.Started):
        text, by = "MIGRATION STARTED", event.by
    elif isinstance(event, Run.Stopped):
        text, by = "MIGRATION STOPPED: logins pass through to the old server", event.by
    elif isinstance(event, Run.FinishRequested):
        text, by = "FINISH MIGRATION requested", event.by
    elif isinstance(event, Run.FinishClaimed):
        text = f"finish work taken on by {event.node}"
    elif isinstance(event, Run.FinishCompleted):
        text = f"FINISH MIGRATION completed: {event.accounts:,} accounts swept, {event.messages:,} late messages copied"
    else:
        text = event_name(event)
    suffix = f" (by {by})" if by else ""
    return [f"{stamp(event.timestamp)} -  {text}{suffix}"]
