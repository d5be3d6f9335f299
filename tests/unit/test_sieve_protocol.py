"""The ManageSieve reader and command writer (RFC 5804), table-tested without a socket."""

from __future__ import annotations

import pytest

from mailmigrator.adapters.sieve.protocol import (
    Atom,
    Code,
    Response,
    SieveLimits,
    SieveProtocolError,
    SieveReader,
    String,
    Token,
    capabilities,
    command,
    put_script_command,
    script_body,
    script_listing,
    string,
)
from mailmigrator.domain.filters import SieveScript, filter_differences

LINES: list[tuple[bytes, tuple[Token, ...]]] = [
    (b"OK\r\n", (Atom("OK"),)),
    (b'OK "Logged in."\r\n', (Atom("OK"), String(b"Logged in."))),
    (b'"IMPLEMENTATION" "Dovecot Pigeonhole"\r\n', (String(b"IMPLEMENTATION"), String(b"Dovecot Pigeonhole"))),
    (b'"STARTTLS"\r\n', (String(b"STARTTLS"),)),
    (b'"Zwei \xc3\xbc" ACTIVE\r\n', (String("Zwei ü".encode()), Atom("ACTIVE"))),
    (b'"a \\"quoted\\" \\\\ name"\r\n', (String(b'a "quoted" \\ name'),)),
    (b'""\r\n', (String(b""),)),
    (b"{5}\r\nab\r\nc\r\n", (String(b"ab\r\nc"),)),
    (b"{0}\r\n\r\n", (String(b""),)),
    (b"NO (QUOTA/MAXSIZE) {12}\r\nscript large\r\n",
     (Atom("NO"), Code((Atom("QUOTA/MAXSIZE"),)), String(b"script large"))),
    (b'OK (SASL "cnNwYXV0aA==")\r\n', (Atom("OK"), Code((Atom("SASL"), String(b"cnNwYXV0aA=="))))),
    (b'NO (TAG {3}\r\nx y) "why"\r\n', (Atom("NO"), Code((Atom("TAG"), String(b"x y"))), String(b"why"))),
]


@pytest.mark.parametrize(("wire", "tokens"), LINES)
def test_a_line_parses_to_its_tokens(wire: bytes, tokens: tuple[Token, ...]) -> None:
    reader = SieveReader()
    reader.feed(wire)
    assert reader.next_line() == tokens
    assert reader.next_line() is None


@pytest.mark.parametrize(("wire", "tokens"), LINES)
def test_a_line_fed_one_octet_at_a_time_waits_for_its_end(wire: bytes, tokens: tuple[Token, ...]) -> None:
    reader = SieveReader()
    for octet in wire[:-1]:
        reader.feed(bytes([octet]))
        assert reader.next_line() is None
    reader.feed(wire[-1:])
    assert reader.next_line() == tokens


BAD_LINES = [
    (b'"unterminated\r\n', "CR, LF or NUL inside a quoted string"),
    (b'"bad \\n escape"\r\n', "escaped"),
    (b'"nul \x00"\r\n', "CR, LF or NUL"),
    (b"{5+}\r\nabcde\r\n", "non-synchronising literal"),
    (b"{x}\r\n", "malformed literal"),
    (b"{99999999}\r\n", "at most"),
    (b'OK"text"\r\n', "where"),
    (b"NO ()\r\n", "empty response code"),
    (b"OK  two spaces\r\n", "where a word belongs"),
]


@pytest.mark.parametrize(("wire", "complaint"), BAD_LINES)
def test_bytes_outside_the_grammar_are_refused_with_a_reason(wire: bytes, complaint: str) -> None:
    reader = SieveReader(SieveLimits(max_literal=1000))
    reader.feed(wire)
    with pytest.raises(SieveProtocolError, match=complaint):
        reader.next_line()


def test_a_line_longer_than_the_limit_is_refused_before_its_end_arrives() -> None:
    reader = SieveReader(SieveLimits(max_line=100))
    reader.feed(b'"' + b"a" * 150)
    with pytest.raises(SieveProtocolError, match="longer than 100"):
        reader.next_line()


def test_a_literal_may_be_longer_than_a_line_but_not_than_its_own_limit() -> None:
    reader = SieveReader(SieveLimits(max_line=100, max_literal=500))
    reader.feed(b"{400}\r\n" + b"x" * 400 + b"\r\n")
    assert reader.next_line() == (String(b"x" * 400),)
    reader.feed(b"{501}\r\n")
    with pytest.raises(SieveProtocolError, match="501 octets"):
        reader.next_line()


def test_a_response_collects_data_lines_until_ok_no_or_bye() -> None:
    reader = SieveReader()
    reader.feed(b'"one"\r\n"Zwei \xc3\xbc" ACTIVE\r\nOK "Listscripts completed."\r\nNO (NONEXISTENT) "gone"\r\n')
    lines: list[tuple[Token, ...]] = []
    listing = reader.next_response(lines)
    assert listing is not None and listing.ok and listing.text == "Listscripts completed."
    assert script_listing(listing) == [("one", False), ("Zwei ü", True)]
    refused = reader.next_response([])
    assert refused == Response("NO", "NONEXISTENT", "gone")


def test_too_many_data_lines_for_one_command_are_refused() -> None:
    reader = SieveReader(SieveLimits(max_lines=3))
    reader.feed(b'"s"\r\n' * 5)
    with pytest.raises(SieveProtocolError, match="more than 3 lines"):
        reader.next_response([])


@pytest.mark.parametrize("wire", [b'"a" ACTIVE\r\n"b" ACTIVE\r\nOK\r\n', b'"a" PASSIVE\r\nOK\r\n', b"ACTIVE\r\nOK\r\n"])
def test_a_listing_the_rfc_does_not_allow_is_refused(wire: bytes) -> None:
    reader = SieveReader()
    reader.feed(wire)
    response = reader.next_response([])
    assert response is not None
    with pytest.raises(SieveProtocolError):
        script_listing(response)


def test_capabilities_by_upper_cased_name() -> None:
    reader = SieveReader()
    reader.feed(b'"IMPLEMENTATION" "Dovecot"\r\n"SASL" "PLAIN LOGIN"\r\n"starttls"\r\nOK "ready"\r\n')
    greeting = reader.next_response([])
    assert greeting is not None
    assert capabilities(greeting.lines) == {"IMPLEMENTATION": "Dovecot", "SASL": "PLAIN LOGIN", "STARTTLS": ""}


def test_getscript_answer_is_one_string_of_bytes() -> None:
    reader = SieveReader()
    reader.feed(b'{18}\r\nrequire "fileinto"\r\nOK\r\n')
    response = reader.next_response([])
    assert response is not None and script_body(response) == b'require "fileinto"'


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("main", b'"main"'),
        ("Zwei ü", '"Zwei ü"'.encode()),
        ('with "quote"', b'{12+}\r\nwith "quote"'),
        ("back\\slash", b"{10+}\r\nback\\slash"),
        ("x" * 1001, b"{1001+}\r\n" + b"x" * 1001),
    ],
)
def test_client_strings_are_quoted_when_safe_else_literals(value: str, wire: bytes) -> None:
    assert string(value) == wire


def test_commands_and_putscript_with_the_script_as_a_literal() -> None:
    assert command("GETSCRIPT", "main") == b'GETSCRIPT "main"\r\n'
    assert command("LOGOUT") == b"LOGOUT\r\n"
    assert put_script_command("Zwei ü", b"keep;\r\n") == 'PUTSCRIPT "Zwei ü" {7+}\r\nkeep;\r\n\r\n'.encode()


def test_filter_differences_by_content_hash_and_active_script() -> None:
    old = [SieveScript("main", b"keep;"), SieveScript("work", b"discard;"), SieveScript("gone", b"stop;")]
    new = [SieveScript("main", b"keep;"), SieveScript("work", b"discard; # edited"), SieveScript("admin", b"x")]
    lines = filter_differences(old, "main", new, "")
    assert lines[0] == "sieve script 'gone': missing on the new server"
    assert lines[1].startswith("sieve script 'work': content differs")
    assert lines[2] == "sieve: 'main' is active on the old server, none on the new"
    assert filter_differences(old[:1], "main", new[:1], "main") == []
