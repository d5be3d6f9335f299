"""/metrics in the Prometheus text exposition format (version 0.0.4), from the console's snapshot."""

from __future__ import annotations

from collections.abc import Iterable

from mailmigrator.domain.states import RUN_STATES
from mailmigrator.ops.console.queries import Snapshot, state_counts
from mailmigrator.projections.accounts import AccountDoc

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render_metrics(snap: Snapshot, messages_per_second: float, bytes_per_second: float,
                   unrecorded_rejections: int = 0) -> str:
    """Every metric of the run, one family after another.

    `unrecorded_rejections`: this node's rejected passwords kept only as a count (unknown logins, rate bound).
    """
    accounts = snap.accounts
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{label_text}}} {_number(value)}" if label_text else f"{name} {_number(value)}")

    family("mailmigrator_run_state", "gauge", "1 for the run's current state, 0 for the others.",
           [({"state": s}, 1 if snap.run["state"] == s else 0) for s in RUN_STATES])
    family("mailmigrator_accounts", "gauge", "Accounts recorded, by migration state.",
           [({"state": s}, n) for s, n in state_counts(accounts).items()])
    family("mailmigrator_accounts_locked", "gauge", "Accounts whose users are locked out while they migrate.",
           [({}, sum(1 for d in accounts if d["locked"]))])
    family("mailmigrator_messages_copied_total", "counter", "Messages copied to the new server (sweeps included).",
           [({}, sum(d["messages"] for d in accounts))])
    family("mailmigrator_bytes_copied_total", "counter", "Bytes copied to the new server (sweeps included).",
           [({}, sum(d["bytes"] for d in accounts))])
    family("mailmigrator_copy_messages_per_second", "gauge", "Copy rate over the last few minutes, in messages.",
           [({}, messages_per_second)])
    family("mailmigrator_copy_bytes_per_second", "gauge", "Copy rate over the last few minutes, in bytes.",
           [({}, bytes_per_second)])
    family("mailmigrator_proxy_logins_total", "counter", "Logins the proxy saw for accounts not yet migrated.",
           [({}, sum(d["logins"] for d in accounts))])
    family("mailmigrator_password_checks_total", "counter",
           "Passwords checked against the old server (proxy logins and manual migrations), by outcome; "
           "rejections not kept as events are counted since this node started.",
           [({"outcome": "verified"}, sum(d.get("passwords_verified", 0) for d in accounts)),
            ({"outcome": "rejected"},
             sum(d.get("passwords_rejected", 0) for d in accounts) + unrecorded_rejections)])
    family("mailmigrator_failures", "gauge", "Problems now recorded, by kind.", _failures(accounts))
    return "\n".join(out) + "\n"


def _failures(accounts: list[AccountDoc]) -> list[tuple[dict[str, str], float]]:
    failed = [d for d in accounts if d["state"] == "failed"]
    scripts = [script for d in accounts if (script := d.get("post_script"))]
    return [
        ({"kind": "copy_retryable"}, sum(1 for d in failed if d["retryable"])),
        ({"kind": "copy_permanent"}, sum(1 for d in failed if not d["retryable"])),
        ({"kind": "message_skipped"}, sum(d["skipped"] for d in accounts)),
        ({"kind": "post_script_failed"}, sum(1 for s in scripts if s["exit_status"] != 0 and not s["timed_out"])),
        ({"kind": "post_script_timeout"}, sum(1 for s in scripts if s["timed_out"])),
    ]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
