"""/metrics in the Prometheus text exposition format (version 0.0.4), from the console's snapshot."""

from __future__ import annotations

from collections.abc import Iterable

from mailmigrator.domain.states import RUN_STATES
from mailmigrator.ops.console.queries import Snapshot, state_counts
from mailmigrator.projections.accounts import StateTotals, roster_progress

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render_metrics(snap: Snapshot, messages_per_second: float, bytes_per_second: float,
                   unrecorded_rejections: int = 0) -> str:
    """Every metric of the run, one family after another.

    `unrecorded_rejections`: this node's rejected passwords kept only as a count (unknown logins, rate bound).
    """
    totals = snap.totals
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
           [({"state": s}, n) for s, n in state_counts(totals).items()])
    roster = roster_progress(totals)
    if roster is not None:
        family("mailmigrator_roster_accounts", "gauge", "Accounts on the roster, by how far they are.",
               [({"progress": key}, roster[key]) for key in ("done", "in_progress", "failed", "not_seen")])
    family("mailmigrator_accounts_locked", "gauge", "Accounts whose users are locked out while they migrate.",
           [({}, sum(t["locked"] for t in totals))])
    family("mailmigrator_messages_copied_total", "counter", "Messages copied to the new server (sweeps included).",
           [({}, sum(t["messages"] for t in totals))])
    family("mailmigrator_bytes_copied_total", "counter", "Bytes copied to the new server (sweeps included).",
           [({}, sum(t["bytes"] for t in totals))])
    family("mailmigrator_copy_messages_per_second", "gauge", "Copy rate over the last few minutes, in messages.",
           [({}, messages_per_second)])
    family("mailmigrator_copy_bytes_per_second", "gauge", "Copy rate over the last few minutes, in bytes.",
           [({}, bytes_per_second)])
    family("mailmigrator_proxy_logins_total", "counter", "Logins the proxy saw for accounts not yet migrated.",
           [({}, sum(t["logins"] for t in totals))])
    family("mailmigrator_password_checks_total", "counter",
           "Passwords checked against the old server (proxy logins and manual migrations), by outcome; "
           "rejections not kept as events are counted since this node started.",
           [({"outcome": "verified"}, sum(t["passwords_verified"] for t in totals)),
            ({"outcome": "rejected"},
             sum(t["passwords_rejected"] for t in totals) + unrecorded_rejections)])
    family("mailmigrator_failures", "gauge", "Problems now recorded, by kind.", _failures(totals))
    return "\n".join(out) + "\n"


def _failures(totals: list[StateTotals]) -> list[tuple[dict[str, str], float]]:
    failed = [t for t in totals if t["state"] == "failed"]
    return [
        ({"kind": "copy_retryable"}, sum(t["retryable"] for t in failed)),
        ({"kind": "copy_permanent"}, sum(t["accounts"] - t["retryable"] for t in failed)),
        ({"kind": "message_skipped"}, sum(t["skipped"] for t in totals)),
        ({"kind": "post_script_failed"}, sum(t["scripts_failed"] for t in totals)),
        ({"kind": "post_script_timeout"}, sum(t["scripts_timed_out"] for t in totals)),
    ]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
