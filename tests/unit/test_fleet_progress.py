"""The run's progress line from account documents: counts, copied totals, average rate and ETA."""

from __future__ import annotations

from mailmigrator.projections.accounts import fleet_progress, new_account_doc, state_totals


def doc(login: str, state: str, copied: int, planned: int, start: str | None, updated: str) -> dict:
    d = new_account_doc(login, "2026-11-28T10:00:00+00:00")
    d.update(state=state, bytes=copied, messages=copied // 100, planned_bytes=planned, started_at=start,
             updated_at=updated)
    return d


def test_progress_counts_rate_and_eta() -> None:
    docs = [
        doc("a@x.org", "completed", 6_000, 6_000, "2026-11-28T10:00:00+00:00", "2026-11-28T10:00:30+00:00"),
        doc("b@x.org", "copying", 3_000, 9_000, "2026-11-28T10:00:10+00:00", "2026-11-28T10:01:00+00:00"),
        doc("c@x.org", "seen", 0, 0, None, "2026-11-28T10:00:05+00:00"),
    ]
    p = fleet_progress(state_totals(docs))
    assert (p["accounts_done"], p["accounts_total"]) == (1, 3)
    assert (p["messages"], p["bytes"]) == (90, 9_000)
    assert p["bytes_per_second"] == 150.0  # 9,000 bytes over the 60 s since the first copy started
    assert p["eta_seconds"] == 40  # 6,000 bytes still planned for b at 150 B/s


def test_nothing_started_has_no_rate_and_no_eta() -> None:
    p = fleet_progress(state_totals([doc("c@x.org", "seen", 0, 0, None, "2026-11-28T10:00:05+00:00")]))
    assert p["bytes_per_second"] == 0.0 and p["eta_seconds"] == 0
    assert fleet_progress([])["accounts_total"] == 0
