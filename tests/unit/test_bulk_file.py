"""Parsing the bulk migration file: good lines, bad lines with their numbers, no password in a problem."""

from __future__ import annotations

from mailmigrator.ops.bulk import parse_bulk

TEXT = """\
# accounts of the sales team
amy:secret1
Bob@Example.com:pa:ss:word
carol:pw with spaces:c.alias@example.com

:nopass-user
dave:
erin
frank:pw:bad-alias@
amy:again
gina:x:y@
"""


def test_good_and_bad_lines() -> None:
    entries, problems = parse_bulk(TEXT, "example.com")
    assert [(e.line, e.login, e.password, e.alias) for e in entries] == [
        (2, "amy@example.com", "secret1", None),
        (3, "bob@example.com", "pa:ss:word", None),
        (4, "carol@example.com", "pw with spaces", "c.alias@example.com"),
    ]
    by_line = {p.line: str(p) for p in problems}
    assert set(by_line) == {6, 7, 8, 9, 10, 11}
    assert "empty user name" in by_line[6]
    assert "no password" in by_line[7] and "no password" in by_line[8]
    assert "bad alias" in by_line[9] and "bad alias" in by_line[11]
    assert "already given on line 2" in by_line[10]
    assert all("secret" not in p and "pw" not in p for p in by_line.values())
    assert "secret1" not in repr(entries[0])


def test_a_password_with_unicode_line_separators_stays_on_its_line() -> None:
    entries, problems = parse_bulk("amy:pa\u2028ss\x85word\x1c!\nbob:two\n", "example.com")
    assert problems == []
    assert [(e.line, e.login, e.password) for e in entries] == [
        (1, "amy@example.com", "pa\u2028ss\x85word\x1c!"),
        (2, "bob@example.com", "two"),
    ]
