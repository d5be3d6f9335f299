"""The roster file: logins read, passwords dropped, every bad line numbered."""

from __future__ import annotations

from mailmigrator.ops.roster import RosterProblem, parse_roster
from mailmigrator.projections.accounts import new_account_doc, roster_progress, state_totals


def test_logins_and_bulk_lines_give_normalised_logins_without_repeats() -> None:
    text = "# roster\n\nAlice\nbob@Other.ORG:s3cret:sales@other.org\n  carol@example.com  \nalice@example.com\r\n"
    logins, problems = parse_roster(text, "example.com")
    assert problems == []
    assert logins == ["alice@example.com", "bob@other.org", "carol@example.com"]


def test_every_bad_line_is_numbered_and_no_password_is_quoted() -> None:
    text = "good@example.com\n:hunter2\nfoo bar:pw-secret\nbare\n"
    logins, problems = parse_roster(text, "")
    assert logins == ["good@example.com"]
    assert [p.line for p in problems] == [2, 3, 4]
    assert problems[0] == RosterProblem(2, "empty user name")
    assert all("hunter2" not in p.reason and "pw-secret" not in p.reason for p in problems)


def test_roster_progress_counts_only_roster_accounts_and_not_withdrawn_ones() -> None:
    def doc(login: str, state: str, on_roster: bool = True) -> dict:
        d = dict(new_account_doc(login, "2026-01-01T00:00:00+00:00"))
        d.update(state=state, on_roster=on_roster)
        return d

    docs = [doc("a", "completed"), doc("b", "swept"), doc("c", "expected"), doc("d", "precopied"),
            doc("e", "failed"), doc("f", "copying"), doc("g", "withdrawn", False), doc("h", "completed", False)]
    assert roster_progress(state_totals(docs)) == {  # type: ignore[arg-type]
        "accounts": 6, "done": 2, "in_progress": 1, "failed": 1, "not_seen": 2}
    assert roster_progress(state_totals([doc("x", "completed", False)])) is None  # type: ignore[list-item]
