"""The sign-off report: one row per roster account, as CSV, JSON or one self-contained HTML page."""

from __future__ import annotations

import csv
import html
import io
import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from mailmigrator.projections.accounts import AccountDoc

COLUMNS = (
    "login", "state", "folders", "old_messages", "old_bytes", "new_messages", "new_bytes",
    "skipped", "skipped_reasons", "first_login_at", "started_at", "completed_at", "swept_at", "duration_seconds",
    "node", "verify_equal", "verify_differences", "verify_at", "error",
)
FORMATS = ("csv", "json", "html")


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _parse(at: str | None) -> datetime | None:
    return _at(at) if at else None


def report_rows(docs: Sequence[AccountDoc]) -> list[dict[str, Any]]:
    """The roster's accounts (every account when no roster was imported), sorted by login."""
    roster = [d for d in docs if d.get("on_roster")]
    rows = []
    for doc in sorted(roster or docs, key=lambda d: d["login"]):
        started, completed = _parse(doc.get("started_at")), _parse(doc.get("completed_at"))
        verify = doc.get("verify") or {}
        reasons = doc.get("skipped_reasons") or {}
        rows.append({
            "login": doc["login"],
            "state": doc["state"],
            "folders": len(doc["folders"]),
            "old_messages": max(doc["planned_messages"], doc["messages"]),
            "old_bytes": max(doc["planned_bytes"], doc["bytes"]),
            "new_messages": doc["messages"],
            "new_bytes": doc["bytes"],
            "skipped": doc["skipped"],
            "skipped_reasons": "; ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items())),
            "first_login_at": doc.get("first_login_at"),
            "started_at": doc.get("started_at"),
            "completed_at": doc.get("completed_at"),
            "swept_at": doc.get("swept_at"),
            "duration_seconds": round((completed - started).total_seconds(), 1) if started and completed else None,
            "node": doc.get("node", ""),
            "verify_equal": verify.get("equal"),
            "verify_differences": verify.get("differences"),
            "verify_at": verify.get("at"),
            "error": doc.get("error"),
        })
    return rows


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"accounts": rows}, indent=1) + "\n"
    if fmt == "html":
        return render_html(rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def format_for(fmt: str | None, out: Path | None) -> str:
    if fmt:
        return fmt
    suffix = out.suffix.lstrip(".").lower() if out else ""
    return {"htm": "html"}.get(suffix, suffix) if suffix in (*FORMATS, "htm") else "csv"


def write_atomically(path: Path, text: str) -> None:
    """A reader of `path` sees the old report or the new one, never half of one."""
    fd, temp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _hourly(rows: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(hour, migrations completed, bytes copied) per hour of completion."""
    count: Counter[str] = Counter()
    volume: Counter[str] = Counter()
    for row in rows:
        if row["completed_at"]:
            hour = row["completed_at"][:13]
            count[hour] += 1
            volume[hour] += row["new_bytes"]
    return [(hour, count[hour], volume[hour]) for hour in sorted(count)]


def _chart(hours: list[tuple[str, int, int]]) -> str:
    """Bars: migrations completed per hour; line: MB copied per hour. Attributes, not CSS, so a strict
    Content-Security-Policy that drops the inline stylesheet still draws it."""
    bar = min(40, max(4, 560 // max(1, len(hours))))
    top = max((n for _, n, _ in hours), default=1)
    top_volume = max((v for _, _, v in hours), default=0) or 1
    bars, points = [], []
    for i, (hour, n, volume) in enumerate(hours):
        h = round(120 * n / top)
        label = html.escape(f"{hour}:00 UTC: {n} migration(s), {volume / 1e6:.1f} MB")
        bars.append(f'<rect class="bar" x="{20 + i * bar}" y="{140 - h}" width="{bar - 2}" height="{h}" '
                    f'fill="#3a7"><title>{label}</title></rect>')
        points.append(f"{20 + i * bar + bar // 2},{140 - round(120 * volume / top_volume)}")
    line = f'<polyline points="{" ".join(points)}" fill="none" stroke="#c50" stroke-width="2"/>' if points else ""
    first = html.escape(hours[0][0]) if hours else "no migrations completed"
    return ('<svg id="per-hour" xmlns="http://www.w3.org/2000/svg" width="600" height="160" role="img" '
            'aria-label="migrations per hour and MB copied per hour">'
            '<line x1="18" y1="140" x2="590" y2="140" stroke="#333"/>' + "".join(bars) + line
            + f'<text x="20" y="155" font-size="10">{first}</text></svg>')


def _throughput(rows: list[dict[str, Any]]) -> str:
    done = [row for row in rows if row["completed_at"] and row["started_at"]]
    if not done:
        return "no completed copies"
    copied = sum(row["new_bytes"] for row in done)
    wall = (max(_at(row["completed_at"]) for row in done) - min(_at(row["started_at"]) for row in done))
    seconds = max(wall.total_seconds(), 1e-3)
    return (f"{copied / 1e6:,.1f} MB in {len(done)} migration(s) over {seconds / 60:,.1f} min: "
            f"{copied / seconds / 1e6:,.2f} MB/s, {len(done) / seconds * 3600:,.0f} migrations/hour")


def render_html(rows: list[dict[str, Any]]) -> str:
    e = html.escape
    states = Counter(row["state"] for row in rows)
    totals = ", ".join(f"{e(state)}: {n}" for state, n in sorted(states.items()))
    sums = {c: sum(row[c] for row in rows) for c in ("old_messages", "new_messages", "old_bytes", "new_bytes",
                                                    "skipped")}
    differ = sum(1 for row in rows if row["verify_equal"] is False)
    unverified = sum(1 for row in rows if row["verify_equal"] is None)
    head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{e('' if row[c] is None else str(row[c]))}</td>" for c in COLUMNS) + "</tr>\n"
        for row in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mailmigrator report</title>
<style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 4px}}</style></head>
<body><h1>Migration report</h1>
<p id="totals">{len(rows)} account(s): {totals}</p>
<p id="sums">messages {sums["old_messages"]:,} old / {sums["new_messages"]:,} new;
{sums["old_bytes"] / 1e6:,.1f} MB old / {sums["new_bytes"] / 1e6:,.1f} MB new; {sums["skipped"]:,} skipped;
verify: {differ} differ, {unverified} not compared</p>
<p id="throughput">Throughput: {e(_throughput(rows))}</p>
<p>Migrations completed per hour (bars) and MB copied per hour (line), UTC:</p>
{_chart(_hourly(rows))}
<table id="accounts" border="1" cellpadding="3"><thead><tr>{head}</tr></thead><tbody>
{body}</tbody></table></body></html>
"""
