"""Table tests of the pre-authentication parsers (no sockets)."""

from __future__ import annotations

import base64

import pytest
import trio
import trio.testing

from mailmigrator.adapters.proxy.imap_protocol import (
    Command,
    ContinuationNeeded,
    Framed,
    ImapCommandReader,
    InputRefused,
    decode_initial_response,
    decode_sasl_plain,
    parse_command,
    quote,
)
from mailmigrator.adapters.proxy.pop3_protocol import LineTooLong, Pop3LineReader, parse_pop3_command
from mailmigrator.adapters.proxy.protocol_errors import (
    CommandSyntaxError,
    authentication_failed,
    imap_reply,
    migration_in_progress,
    pop3_reply,
)
from mailmigrator.adapters.proxy.throttle import Attempt, LoginThrottle


def commands(data: bytes, **limits: int) -> list[object]:
    reader = ImapCommandReader(**limits)
    out: list[object] = []
    for event in reader.feed(data):
        out.append(parse_command(event) if isinstance(event, Framed) else event)
    return out


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"a1 CAPABILITY\r\n", Command("a1", "CAPABILITY")),
        (b"a2 login alice secret\r\n", Command("a2", "LOGIN", ("alice", "secret"))),
        (b'a3 LOGIN "al\\"ice" "p a\\\\ss"\r\n', Command("a3", "LOGIN", ('al"ice', "p a\\ss"))),
        (b"a4 LOGIN {5+}\r\nalice {6+}\r\nsecr t\r\n", Command("a4", "LOGIN", ("alice", "secr t"))),
        (b"a5 LOGIN alice {7+}\r\n\xc3\xbc-secr\r\n", Command("a5", "LOGIN", ("alice", "ü-secr"))),
        (b"a6 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n", Command("a6", "AUTHENTICATE", ("PLAIN", "AGFsaWNlAHNlY3JldA=="))),
        (b'a7 ID ("name" "Thunderbird" "version" "115")\r\n', Command("a7", "ID", (["name", "Thunderbird", "version", "115"],))),
        (b"a8 ID NIL\r\n", Command("a8", "ID", (None,))),
        (b"a9 NOOP\n", Command("a9", "NOOP")),
        (b"b1 LOGOUT\r\n", Command("b1", "LOGOUT")),
        (b"b2 STARTTLS\r\n", Command("b2", "STARTTLS")),
    ],
)
def test_imap_commands_parse(wire: bytes, expected: Command) -> None:
    assert commands(wire) == [expected]


def test_synchronising_literal_asks_for_continuation_then_completes() -> None:
    reader = ImapCommandReader()
    first = reader.feed(b"a1 LOGIN {5}\r\n")
    assert first == [ContinuationNeeded()]
    rest = reader.feed(b"alice {3}\r\n")
    assert rest == [ContinuationNeeded()]
    done = reader.feed(b"pwd\r\n")
    assert [parse_command(e) for e in done if isinstance(e, Framed)] == [Command("a1", "LOGIN", ("alice", "pwd"))]


@pytest.mark.parametrize(
    ("wire", "tag", "message"),
    [
        (b"a1 LOGIN alice\r\n", "a1", "LOGIN needs"),
        (b"a1 LOGIN alice pw extra\r\n", "a1", "LOGIN needs"),
        (b'a1 LOGIN "alice pw\r\n', "a1", "Unterminated"),
        (b'a1 LOGIN "a\\lice" pw\r\n', "a1", "Invalid escape"),
        (b"a1 CAPABILITY now\r\n", "a1", "takes no arguments"),
        (b"a1\r\n", "a1", "Missing command"),
        (b"\r\n", "*", "Missing tag"),
        (b"+x NOOP\r\n", "*", "Invalid tag"),
        (b"a1 ID (\"name\"\r\n", "a1", "Unbalanced"),
        (b"a1 LOGIN al\xffce pw\r\n", "a1", "not UTF-8"),
    ],
)
def test_imap_syntax_errors_name_the_problem(wire: bytes, tag: str, message: str) -> None:
    [framed] = ImapCommandReader().feed(wire)
    assert isinstance(framed, Framed)
    with pytest.raises(CommandSyntaxError) as caught:
        parse_command(framed)
    assert message in caught.value.text
    assert getattr(caught.value, "tag") == tag
    assert imap_reply(tag, caught.value).startswith(f"{tag} BAD ".encode())


def test_oversized_line_is_discarded_without_buffering_and_reader_recovers() -> None:
    reader = ImapCommandReader(max_line=100)
    assert reader.feed(b"a1 LOGIN " + b"x" * 500) == []
    assert len(reader._buffer) == 0  # nothing of the long line is kept
    events = reader.feed(b"y" * 500 + b"\r\na2 NOOP\r\n")
    assert isinstance(events[0], InputRefused) and events[0].error.code == "TOOBIG"
    assert parse_command(events[1]) == Command("a2", "NOOP")  # type: ignore[arg-type]


def test_oversized_synchronising_literal_is_refused_before_the_client_sends_it() -> None:
    events = ImapCommandReader(max_literal=1000).feed(b"a1 LOGIN alice {100000}\r\n")
    assert len(events) == 1 and isinstance(events[0], InputRefused)
    assert events[0].tag == "a1" and not events[0].error.fatal


def test_oversized_non_synchronising_literal_is_fatal() -> None:
    events = ImapCommandReader(max_literal=1000).feed(b"a1 LOGIN alice {100000+}\r\nxxxx")
    assert isinstance(events[-1], InputRefused) and events[-1].error.fatal


def test_sasl_plain_and_initial_response() -> None:
    assert decode_sasl_plain(b"\x00alice\x00s3cret") == ("", "alice", "s3cret")
    assert decode_sasl_plain(b"alice\x00alice\x00pw") == ("alice", "alice", "pw")
    assert decode_initial_response("=") == b""
    assert decode_initial_response(base64.b64encode(b"\x00u\x00p").decode()) == b"\x00u\x00p"
    with pytest.raises(CommandSyntaxError):
        decode_sasl_plain(b"no-nuls")
    with pytest.raises(CommandSyntaxError):
        decode_initial_response("***")


def test_command_repr_hides_credentials() -> None:
    [command] = commands(b"a1 LOGIN alice hunter2\r\n")
    assert "hunter2" not in repr(command)
    assert "hunter2" not in repr(parse_pop3_command(b"PASS hunter2"))


def test_quote_uses_literal_for_non_ascii() -> None:
    assert quote('a"b') == b'"a\\"b"'
    assert quote("ü") == b"{2+}\r\n\xc3\xbc"


@pytest.mark.parametrize(
    ("line", "name", "args"),
    [
        (b"CAPA", "CAPA", ()),
        (b"user alice", "USER", ("alice",)),
        (b"PASS with spaces inside", "PASS", ("with spaces inside",)),
        (b"AUTH PLAIN AGEAYg==", "AUTH", ("PLAIN", "AGEAYg==")),
        (b"AUTH", "AUTH", ()),
        (b"STLS", "STLS", ()),
        (b"QUIT", "QUIT", ()),
    ],
)
def test_pop3_commands_parse(line: bytes, name: str, args: tuple[str, ...]) -> None:
    command = parse_pop3_command(line)
    assert (command.name, command.args) == (name, args)


@pytest.mark.parametrize("line", [b"", b"USER", b"USER a b", b"PASS", b"CAPA x", b"123", b"TOOLONG x", b"US\x01ER a"])
def test_pop3_malformed_commands_are_refused(line: bytes) -> None:
    with pytest.raises(CommandSyntaxError):
        parse_pop3_command(line)


def test_pop3_long_line_skipped() -> None:
    reader = Pop3LineReader(max_line=50)
    assert reader.feed(b"PASS " + b"x" * 200) == []
    events = reader.feed(b"yyy\r\nQUIT\r\n")
    assert isinstance(events[0], LineTooLong) and events[1] == b"QUIT"


def test_error_kinds_map_to_imap_and_pop3() -> None:
    assert imap_reply("a1", authentication_failed()) == b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    assert pop3_reply(authentication_failed()) == b"-ERR [AUTH] Authentication failed.\r\n"
    assert imap_reply("a1", migration_in_progress()) == b"a1 NO [UNAVAILABLE] Migration in progress, try again later\r\n"
    assert pop3_reply(migration_in_progress()) == b"-ERR [IN-USE] Migration in progress, try again later\r\n"


async def test_throttle_per_login_and_per_address_with_window() -> None:
    now = [0.0]
    throttle = LoginThrottle(max_per_login=3, max_per_address=5, window_seconds=60, clock=lambda: now[0])

    async def fail(login: str, address: str) -> None:
        attempt = await throttle.begin([login], address)
        assert isinstance(attempt, Attempt)
        attempt.failed()

    for _ in range(3):
        await fail("alice", "10.0.0.1")
    assert await throttle.begin(["alice"], "10.0.0.2") == "login"  # per login, from anywhere
    assert throttle.refusal(["bob", "alice"], "10.0.0.2") == "login"  # any of its names
    await fail("bob", "10.0.0.1")
    await fail("carol", "10.0.0.1")
    assert throttle.refusal(["dave"], "10.0.0.1") == "address"  # per address: 5 failures
    now[0] = 61.0
    assert throttle.refusal(["alice"], "10.0.0.1") is None and throttle.refusal(["dave"], "10.0.0.1") is None
    await fail("erin", "10.0.0.3")
    attempt = await throttle.begin(["erin"], "10.0.0.3")
    assert isinstance(attempt, Attempt)
    attempt.succeeded()
    assert throttle.logins.used("erin") == 0


async def test_throttle_counts_attempts_in_flight_and_waits_for_their_outcome() -> None:
    throttle = LoginThrottle(max_per_login=3, max_per_address=50, max_in_flight_per_address=4, max_wait_seconds=5)
    outcomes: list[object] = []
    running: list[Attempt] = []

    async def one(n: int) -> None:
        attempt = await throttle.begin(["alice"], f"10.0.0.{n}")
        outcomes.append(attempt if isinstance(attempt, str) else "began")
        if isinstance(attempt, Attempt):
            running.append(attempt)

    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(one, n)
        await trio.testing.wait_all_tasks_blocked()
        assert len(running) == 3  # parallel attempts use the budget before any ends; the rest wait
        for attempt in running:
            attempt.failed()
    assert outcomes.count("began") == 3 and outcomes.count("login") == 7
    many = [await throttle.begin([f"user{n}"], "10.0.0.99") for n in range(4)]
    with trio.move_on_after(0.2) as waited:
        await throttle.begin(["other"], "10.0.0.99")  # a fifth attempt from one address waits
    assert waited.cancelled_caught
    for attempt in many:
        assert isinstance(attempt, Attempt)
        attempt.succeeded()
    assert isinstance(await throttle.begin(["other"], "10.0.0.99"), Attempt)


async def test_throttle_memory_is_bounded_under_distinct_logins() -> None:
    now = [0.0]
    throttle = LoginThrottle(window_seconds=60, max_per_address=10**9, clock=lambda: now[0])
    throttle.logins.max_keys = 100
    for n in range(1000):
        now[0] = n / 10
        attempt = await throttle.begin([f"user{n}"], "10.0.0.1")
        assert isinstance(attempt, Attempt)
        attempt.failed()
    assert throttle.logins.tracked <= 100
