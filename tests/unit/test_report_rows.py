"""The report's rows and formats from account documents: roster filter, old and new side, escaping, suffixes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from mailmigrator.ops.report import COLUMNS, format_for, render, report_rows, write_atomically
from mailmigrator.projections.accounts import AccountDoc, new_account_doc

AT = "2026-11-28T10:00:00+00:00"


def doc(login: str, *, roster: bool = True, **fields: object) -> AccountDoc:
    d = new_account_doc(login, AT, "expected" if roster else "seen")
    d["on_roster"] = roster
    d.update(fields)  # type: ignore[typeddict-item]
    return d


def test_rows_are_the_roster_with_the_old_side_from_the_plan() -> None:
    copied = doc("a@example.com", state="completed", planned_messages=5, planned_bytes=500, messages=4, bytes=400,
                 started_at=AT, completed_at="2026-11-28T10:01:30+00:00", skipped=1,
                 skipped_reasons={"too large": 1}, verify={"equal": False, "differences": 1, "examples": [],
                                                           "node": "n", "at": "2026-11-28T11:00:00+00:00"})
    rows = report_rows([doc("z@example.com"), copied, doc("stranger@example.com", roster=False)])
    assert [r["login"] for r in rows] == ["a@example.com", "z@example.com"]
    a = rows[0]
    assert (a["old_messages"], a["new_messages"], a["old_bytes"], a["new_bytes"]) == (5, 4, 500, 400)
    assert (a["duration_seconds"], a["skipped_reasons"], a["verify_equal"]) == (90.0, "too large: 1", False)
    assert rows[1]["duration_seconds"] is None and rows[1]["verify_at"] is None


def test_without_a_roster_every_account_is_a_row() -> None:
    assert len(report_rows([doc("a@example.com", roster=False), doc("b@example.com", roster=False)])) == 2


def test_formats_escape_and_parse() -> None:
    rows = report_rows([doc('<img src=x onerror="alert(1)">@example.com', error="</td><script>")])
    table = list(csv.reader(io.StringIO(render(rows, "csv"))))
    assert table[0] == list(COLUMNS) and table[1][0] == '<img src=x onerror="alert(1)">@example.com'
    assert json.loads(render(rows, "json"))["accounts"][0]["error"] == "</td><script>"
    page = render(rows, "html")
    assert "<img" not in page and "<script" not in page and "&lt;/td&gt;&lt;script&gt;" in page


@pytest.mark.parametrize(("fmt", "out", "expected"), [
    (None, None, "csv"), (None, "r.json", "json"), (None, "r.HTML", "html"), (None, "r.htm", "html"),
    (None, "r.txt", "csv"), ("json", "r.html", "json"),
])
def test_format_follows_the_flag_then_the_suffix(fmt: str | None, out: str | None, expected: str) -> None:
    assert format_for(fmt, Path(out) if out else None) == expected


def test_write_replaces_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "r.csv"
    target.write_text("old")
    write_atomically(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["r.csv"]
