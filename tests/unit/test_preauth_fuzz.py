"""Property tests of the pre-authentication parsers: whatever a client sends, they only ever refuse it properly."""

from __future__ import annotations

import base64

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailmigrator.adapters.proxy.imap_protocol import (
    ContinuationNeeded,
    Framed,
    ImapCommandReader,
    InputRefused,
    decode_initial_response,
    decode_sasl_plain,
    parse_command,
    parse_sasl_line,
)
from mailmigrator.adapters.proxy.pop3_protocol import LineTooLong, Pop3LineReader, parse_pop3_command
from mailmigrator.adapters.proxy.protocol_errors import CommandSyntaxError

FUZZ = settings(max_examples=300, deadline=None)

# Pieces that make IMAP framing interesting: literals of every kind, CR/LF alone, quotes, parentheses.
IMAP_TOKENS = st.sampled_from([
    b"a1 ", b"LOGIN ", b"AUTHENTICATE PLAIN ", b"ID ", b"CAPABILITY", b"{0}", b"{3}", b"{5+}", b"{99999}",
    b"{400+}", b"{12", b"}", b"\r\n", b"\n", b"\r", b'"', b'\\"', b"(", b")", b"NIL", b" ", b"\x00", b"\xc3\xbc",
    b"\xff", b"+", b"*", b"=", b"x" * 64,
])
imap_input = st.lists(st.one_of(IMAP_TOKENS, st.binary(max_size=40)), max_size=60).map(b"".join)
pop3_input = st.lists(st.one_of(
    st.sampled_from([b"USER ", b"PASS ", b"AUTH PLAIN", b"CAPA", b"STLS", b"QUIT", b"\r\n", b"\n", b"\r", b" ",
                     b"\x00", b"\xc3\xbc", b"\xff", b"\t"]),
    st.binary(max_size=40)), max_size=60).map(b"".join)
line_limit = st.integers(min_value=70, max_value=300)
literal_limit = st.integers(min_value=0, max_value=500)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def imap_summary(event: object) -> tuple[object, ...]:
    if isinstance(event, Framed):
        return ("command", event.pieces, event.literals)
    if isinstance(event, InputRefused):
        return ("refused", event.tag, event.error.text, event.error.code, event.error.fatal)
    assert isinstance(event, ContinuationNeeded)
    return ("continue",)


def imap_events(chunks: list[bytes], max_line: int, max_literal: int) -> tuple[list[tuple[object, ...]], ImapCommandReader]:
    reader = ImapCommandReader(max_line=max_line, max_literal=max_literal)
    events: list[tuple[object, ...]] = []
    for chunk in chunks:
        events += [imap_summary(e) for e in reader.feed(chunk)]
    return events, reader


@FUZZ
@given(imap_input, st.lists(st.integers(min_value=0), max_size=12), line_limit, literal_limit)
# A line of exactly max_line whose CR ends a packet; a too-long line refused under its own tag.
@example(b"a1 " + b"x" * 67 + b"\r\n", [71], 70, 0)
@example(b"a1 LOGIN " + b"x" * 100 + b"\r\n", [90], 70, 0)
def test_imap_reader_gives_the_same_events_however_the_input_is_chunked(
    data: bytes, cuts: list[int], max_line: int, max_literal: int
) -> None:
    whole, _ = imap_events([data], max_line, max_literal)
    pieces, reader = imap_events(chunked(data, cuts), max_line, max_literal)
    assert pieces == whole
    assert len(reader.unconsumed()) <= len(data)


@FUZZ
@given(imap_input, st.lists(st.integers(min_value=0), max_size=12), line_limit, literal_limit)
def test_imap_reader_respects_its_limits_and_parse_only_raises_syntax_errors(
    data: bytes, cuts: list[int], max_line: int, max_literal: int
) -> None:
    reader = ImapCommandReader(max_line=max_line, max_literal=max_literal)
    for chunk in chunked(data, cuts):
        for event in reader.feed(chunk):
            if isinstance(event, Framed):
                assert all(len(piece) <= max_line for piece in event.pieces)
                assert all(len(literal) <= max_literal for literal in event.literals)
                try:
                    parse_command(event)
                except CommandSyntaxError:
                    pass
        if not reader._failed:
            # Held back: at most one unfinished line, plus the command being framed (itself bounded).
            assert len(reader._buffer) <= max_line + 1
            assert len(reader.unconsumed()) <= 2 * (max_literal + 4 * max_line) + max_line + 1


login_line = st.sampled_from([b"a1 LOGIN alice secret\r\n", b'x LOGIN "al ice" {3+}\r\npwd\r\n', b"t LOGIN a b\n"])


@FUZZ
@given(login_line, imap_input, st.lists(st.integers(min_value=0), max_size=12))
def test_imap_reader_leaves_everything_after_a_command_unconsumed_as_sent(
    login: bytes, rest: bytes, cuts: list[int]
) -> None:
    reader = ImapCommandReader()
    event = None
    for chunk in chunked(login + rest, cuts):
        reader.receive(chunk)
        if event is None:
            event = reader.next_event()
    if event is None:
        event = reader.next_event()
    assert isinstance(event, Framed)
    assert reader.unconsumed() == rest


def pop3_lines(chunks: list[bytes], max_line: int) -> tuple[list[bytes | str], Pop3LineReader]:
    reader = Pop3LineReader(max_line=max_line)
    lines: list[bytes | str] = []
    for chunk in chunks:
        lines += ["too long" if isinstance(line, LineTooLong) else line for line in reader.feed(chunk)]
    return lines, reader


@FUZZ
@given(pop3_input, st.lists(st.integers(min_value=0), max_size=12), line_limit)
@example(b"USER " + b"x" * 65 + b"\r\n", [71], 70)
def test_pop3_reader_is_chunking_independent_bounded_and_parse_only_raises_syntax_errors(
    data: bytes, cuts: list[int], max_line: int
) -> None:
    whole, _ = pop3_lines([data], max_line)
    pieces, reader = pop3_lines(chunked(data, cuts), max_line)
    assert pieces == whole
    assert len(reader.unconsumed()) <= max_line + 1
    for line in pieces:
        if isinstance(line, bytes):
            assert len(line) <= max_line
            try:
                parse_pop3_command(line)
            except CommandSyntaxError:
                pass


@FUZZ
@given(st.sampled_from([b"USER alice\r\n", b"PASS p w\r\n", b"PASS x\n"]), pop3_input,
       st.lists(st.integers(min_value=0), max_size=12))
def test_pop3_reader_leaves_everything_after_a_line_unconsumed_as_sent(line: bytes, rest: bytes, cuts: list[int]) -> None:
    reader = Pop3LineReader()
    for chunk in chunked(line + rest, cuts):
        reader.receive(chunk)
    assert isinstance(reader.next_line(), bytes)
    assert reader.unconsumed() == rest


@FUZZ
@given(st.binary(max_size=300), st.text(max_size=100))
def test_sasl_decoding_only_raises_syntax_errors(data: bytes, argument: str) -> None:
    for decode in (lambda: parse_sasl_line(data), lambda: decode_sasl_plain(data),
                   lambda: decode_initial_response(argument)):
        try:
            decode()
        except CommandSyntaxError:
            pass


no_nul = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)


@FUZZ
@given(no_nul, no_nul.filter(bool), no_nul)
def test_sasl_plain_round_trips_any_utf8_credentials(authzid: str, user: str, password: str) -> None:
    line = base64.b64encode(b"\x00".join(s.encode() for s in (authzid, user, password)))
    decoded = parse_sasl_line(line + b"\r\n")
    assert decoded is not None
    assert decode_sasl_plain(decoded) == (authzid, user, password)
    assert decode_initial_response(line.decode()) == decoded
