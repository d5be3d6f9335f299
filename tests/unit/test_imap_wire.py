"""The copy engine's lean IMAP wire format: bytes in, facts out; commands out."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mailmigrator.adapters.imap.wire import (
    AppendItem,
    FetchedItems,
    WireSyntaxError,
    append_command,
    fetch_command,
    format_internaldate,
    literal_size,
    mailbox_name,
    parse_fetch,
    parse_internaldate,
    parse_size,
    sizes_command,
    tagged_status,
    uid_set,
)


@pytest.mark.parametrize(("line", "size"), [
    (b"* 1 FETCH (UID 3 BODY[] {1234}\r\n", 1234),
    (b"* 1 FETCH (UID 3 BODY[] {0}\r\n", 0),
    (b"* 1 FETCH (UID 3 FLAGS ())\r\n", None),
    (b'* 1 FETCH (INTERNALDATE "{12}")\r\n', None),
    (b"* 1 FETCH (BODY[] {12}", None),  # no CRLF yet: not an announcement
])
def test_literal_size(line: bytes, size: int | None) -> None:
    assert literal_size(line) == size


@pytest.mark.parametrize(("uids", "text"), [
    ([5], b"5"),
    ([1, 2, 3, 7], b"1:3,7"),
    ([9, 1, 2, 2, 10], b"1:2,9:10"),
    ([4, 6, 8], b"4,6,8"),
])
def test_uid_set_collapses_runs(uids: list[int], text: bytes) -> None:
    assert uid_set(uids) == text


def test_uid_set_refuses_nothing() -> None:
    with pytest.raises(ValueError):
        uid_set([])


def test_commands() -> None:
    assert fetch_command(b"MM1", [3, 4]) == b"MM1 UID FETCH 3:4 (UID FLAGS INTERNALDATE BODY.PEEK[])\r\n"
    assert sizes_command(b"MM2", 0) == b"MM2 UID FETCH 1:* (UID RFC822.SIZE)\r\n"
    assert sizes_command(b"MM2", 17) == b"MM2 UID FETCH 17:* (UID RFC822.SIZE)\r\n"


@pytest.mark.parametrize(("segments", "literals", "expected"), [
    (
        [b'* 1 FETCH (UID 7 FLAGS (\\Seen $Forwarded) INTERNALDATE "17-Jul-1996 02:44:25 -0700" BODY[] {5}\r\n',
         b")\r\n"],
        [b"hello"],
        FetchedItems(7, ("\\Seen", "$Forwarded"), b"17-Jul-1996 02:44:25 -0700", b"hello"),
    ),
    (  # items in another order, the body first, lower-case names
        [b"* 12 FETCH (body[] {3}\r\n", b' uid 99 flags () internaldate " 1-Jan-2020 00:00:00 +0000")\r\n'],
        [b"a\r\n"],
        FetchedItems(99, (), b" 1-Jan-2020 00:00:00 +0000", b"a\r\n"),
    ),
    (  # a flags update without a body (another session changed flags)
        [b"* 3 FETCH (FLAGS (\\Deleted) UID 4)\r\n"],
        [],
        FetchedItems(4, ("\\Deleted",), None, None),
    ),
    (  # a quoted body and an unknown item with brackets and a list are skipped over
        [b'* 3 FETCH (BODY[HEADER.FIELDS (A B)] "x" MODSEQ (12) BODY[] "q\\"b" UID 5)\r\n'],
        [],
        FetchedItems(5, None, None, b'q"b'),
    ),
    (  # literal bytes that look like syntax are data
        [b"* 1 FETCH (UID 2 BODY[] {4}\r\n", b")\r\n"],
        [b")(\r\n"],
        FetchedItems(2, None, None, b")(\r\n"),
    ),
])
def test_parse_fetch(segments: list[bytes], literals: list[bytes], expected: FetchedItems) -> None:
    assert parse_fetch(segments, literals) == expected


@pytest.mark.parametrize(("segments", "literals"), [
    ([b"* 1 FETCH (UID 2 BODY[] {4}\r\n"], [b"abcd"]),  # literal without the closing segment
    ([b'* 1 FETCH (INTERNALDATE "open)\r\n'], []),
    ([b"* 1 FETCH UID 2)\r\n"], []),
    ([b"* OK ready\r\n"], []),
])
def test_parse_fetch_refuses_malformed_responses(segments: list[bytes], literals: list[bytes]) -> None:
    with pytest.raises(WireSyntaxError):
        parse_fetch(segments, literals)


@pytest.mark.parametrize(("line", "parsed"), [
    (b"* 4 FETCH (UID 10 RFC822.SIZE 2000)\r\n", (10, 2000)),
    (b"* 4 FETCH (RFC822.SIZE 31 UID 11)\r\n", (11, 31)),
    (b"* 4 FETCH (FLAGS (\\Seen))\r\n", None),
    (b"* 5 EXISTS\r\n", None),
])
def test_parse_size(line: bytes, parsed: tuple[int, int] | None) -> None:
    assert parse_size(line) == parsed


@pytest.mark.parametrize(("line", "status"), [
    (b"MM3 OK [APPENDUID 1 5:7] done\r\n", ("OK", b"[APPENDUID 1 5:7] done")),
    (b"MM3 no [OVERQUOTA] full\r\n", ("NO", b"[OVERQUOTA] full")),
    (b"MM31 OK done\r\n", None),
    (b"* OK still working\r\n", None),
])
def test_tagged_status(line: bytes, status: tuple[str, bytes] | None) -> None:
    assert tagged_status(line, b"MM3") == status


@pytest.mark.parametrize(("text", "when"), [
    (b"17-Jul-1996 02:44:25 -0700", datetime(1996, 7, 17, 2, 44, 25, tzinfo=timezone(timedelta(hours=-7)))),
    (b" 1-Jan-2020 10:00:00 +0130", datetime(2020, 1, 1, 10, 0, tzinfo=timezone(timedelta(minutes=90)))),
])
def test_internaldate_both_ways(text: bytes, when: datetime) -> None:
    parsed = parse_internaldate(text)
    assert parsed == when and parsed.utcoffset() == when.utcoffset()
    assert format_internaldate(parsed) == b'"' + (b" " + text.strip() if text.strip()[1:2] == b"-" else text) + b'"'


def test_internaldate_refuses_garbage() -> None:
    with pytest.raises(WireSyntaxError):
        parse_internaldate(b"yesterday")


def test_mailbox_name_is_quoted_modified_utf7() -> None:
    assert mailbox_name("Entwürfe") == b'"Entw&APw-rfe"'
    assert mailbox_name('a"b\\c') == b'"a\\"b\\\\c"'


def test_append_command_sends_bodies_as_their_own_pieces() -> None:
    when = datetime(2020, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    first, second = b"Subject: a\r\n\r\nx\r\n", b"Subject: b\r\n\r\ny\r\n"
    pieces = append_command(b"MM9", "INBOX", [AppendItem(("\\Seen",), when, first), AppendItem((), None, second)])
    assert pieces[2] is first and pieces[4] is second
    assert b"".join(pieces) == (
        b'MM9 APPEND "INBOX" (\\Seen) " 3-Feb-2020 04:05:06 +0000" {17+}\r\n' + first
        + b" () {17+}\r\n" + second + b"\r\n"
    )


def test_common_shape_and_general_tokenizer_agree() -> None:
    head = b'* 9 FETCH (UID 41 FLAGS (\\Seen \\Answered $Label1) INTERNALDATE "30-Aug-2017 23:27:00 +0000" BODY[] {3}\r\n'
    common = parse_fetch([head, b")\r\n"], [b"abc"])
    general = parse_fetch([head, b" MODSEQ (17))\r\n"], [b"abc"])  # an extra item: not the common shape
    assert common == general == FetchedItems(41, ("\\Seen", "\\Answered", "$Label1"),
                                             b"30-Aug-2017 23:27:00 +0000", b"abc")
