"""The copy engine's lean IMAP wire format: FETCH responses in, FETCH and APPEND commands out. Touches no socket.

imapclient lexes every response in Python and copies every message it
appends; the copy engine's two hot commands are written and read here
instead, on the same connection (`stream` owns the socket).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from imapclient.imap_utf7 import encode as encode_utf7

_LITERAL = re.compile(rb"\{(\d+)\}\r\n\Z")
_FETCH = re.compile(rb"\* \d+ FETCH \(", re.IGNORECASE)
_MONTHS = {m.encode(): i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_MONTH_NAMES = {i: m for m, i in _MONTHS.items()}

# The shape Dovecot and most servers answer the copier's FETCH with; anything else goes through the tokenizer.
_COMMON_FETCH = re.compile(
    rb'\* \d+ FETCH \(UID (\d+) FLAGS \(([^()"{}\[\]]*)\) INTERNALDATE "([^"\\]*)" BODY\[\] \{\d+\}\r\n\Z',
    re.IGNORECASE,
)

# What the copier fetches per message (RFC 3501 section 6.4.5; PEEK keeps \Seen as it was).
FETCH_ITEMS = b"(UID FLAGS INTERNALDATE BODY.PEEK[])"


class WireSyntaxError(ValueError):
    """A server response this parser cannot read."""


@dataclass(frozen=True)
class FetchedItems:
    """The items of one untagged FETCH response the copier asked for; missing ones are None."""

    uid: int | None
    flags: tuple[str, ...] | None
    internaldate: bytes | None
    body: bytes | None


def literal_size(line: bytes) -> int | None:
    """The size N when `line` ends with the literal announcement ``{N}`` + CRLF (RFC 3501 section 4.3), else None."""
    if not line.endswith(b"}\r\n"):
        return None
    match = _LITERAL.search(line)
    return int(match.group(1)) if match else None


def uid_set(uids: Sequence[int]) -> bytes:
    """An RFC 3501 sequence set with runs collapsed: [1, 2, 3, 7] -> b"1:3,7"."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("an empty UID set")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(parts).encode("ascii")


def fetch_command(tag: bytes, uids: Sequence[int]) -> bytes:
    """``UID FETCH`` of the copier's items for `uids`."""
    return tag + b" UID FETCH " + uid_set(uids) + b" " + FETCH_ITEMS + b"\r\n"


def tagged_status(line: bytes, tag: bytes) -> tuple[str, bytes] | None:
    """("OK" | "NO" | "BAD", the rest) when `line` is the tagged completion for `tag`, else None."""
    if not line.startswith(tag + b" "):
        return None
    status, _, text = line[len(tag) + 1:].partition(b" ")
    return status.decode("ascii", "replace").upper(), text.rstrip(b"\r\n")


def is_bye(line: bytes) -> bool:
    return line[:6].upper() == b"* BYE "


def is_fetch(first_line: bytes) -> bool:
    return _FETCH.match(first_line) is not None


def parse_fetch(segments: Sequence[bytes], literals: Sequence[bytes]) -> FetchedItems:
    """One untagged FETCH response read as text segments with the literals between them.

    `segments[i]` ends with the ``{N}`` announcing `literals[i]`; the last
    segment ends the response. Only UID, FLAGS, INTERNALDATE and BODY[] are
    kept; other items are skipped.
    """
    if len(segments) != len(literals) + 1:
        raise WireSyntaxError("a FETCH response with unmatched literals")
    if len(literals) == 1 and segments[1] == b")\r\n":
        common = _COMMON_FETCH.match(segments[0])
        if common is not None:
            uid, flags, internaldate = common.groups()
            return FetchedItems(int(uid), tuple(f.decode("utf-8", "replace") for f in flags.split()),
                                internaldate, literals[0])
    tokens = _tokens(segments, literals)
    if len(tokens) < 4 or tokens[0] != b"*" or not isinstance(tokens[3], list):
        raise WireSyntaxError("not a FETCH response")
    items = tokens[3]
    uid = flags = internaldate = body = None
    for i in range(0, len(items) - 1, 2):
        name, value = items[i], items[i + 1]
        if not isinstance(name, bytes):
            raise WireSyntaxError("a FETCH item without a name")
        key = name.upper()
        if key == b"UID" and isinstance(value, bytes):
            uid = int(value)
        elif key == b"FLAGS" and isinstance(value, list):
            flags = tuple(f.decode("utf-8", "replace") for f in value if isinstance(f, bytes))
        elif key == b"INTERNALDATE" and isinstance(value, (bytes, _Quoted)):
            internaldate = bytes(value)
        elif key == b"BODY[]" and isinstance(value, (_Literal, _Quoted)):
            body = value.data
    return FetchedItems(uid, flags, internaldate, body)


class _Literal:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _Quoted(bytes):
    @property
    def data(self) -> bytes:
        return bytes(self)


_Token = bytes | _Literal | list  # list of tokens


# One token of RFC 3501 section 4: "(", ")", a quoted string, or an atom whose [section] may hold spaces.
_TOKEN = re.compile(rb' *(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|((?:[^ ()"\[\]]|\[[^\]]*\])+))')
_QUOTED_PAIR = re.compile(rb"\\(.)")


def _tokens(segments: Sequence[bytes], literals: Sequence[bytes]) -> list[_Token]:
    """Atoms, quoted strings, literals and parenthesised lists (RFC 3501 section 4)."""
    root: list[_Token] = []
    stack = [root]
    for index, segment in enumerate(segments):
        text = segment.rstrip(b"\r\n")
        if index < len(literals):
            text = text[:text.rfind(b"{")]
        pos, end = 0, len(text.rstrip(b" "))
        while pos < end:
            match = _TOKEN.match(text, pos)
            if match is None:
                raise WireSyntaxError(f"unreadable response text at {text[pos:pos + 20]!r}")
            pos = match.end()
            opening, closing, quoted, atom = match.groups()
            if atom is not None:
                stack[-1].append(atom)
            elif quoted is not None:
                stack[-1].append(_Quoted(_QUOTED_PAIR.sub(rb"\1", quoted) if b"\\" in quoted else quoted))
            elif opening is not None:
                child: list[_Token] = []
                stack[-1].append(child)
                stack.append(child)
            else:
                if len(stack) == 1:
                    raise WireSyntaxError("unbalanced parenthesis")
                stack.pop()
        if index < len(literals):
            stack[-1].append(_Literal(literals[index]))
    return root


def parse_internaldate(text: bytes) -> datetime:
    """``"17-Jul-1996 02:44:25 -0700"`` (RFC 3501 date-time) as an aware datetime."""
    try:
        date, clock, zone = text.strip().split(b" ")
        day, month, year = date.split(b"-")
        hour, minute, second = clock.split(b":")
        sign = -1 if zone[:1] == b"-" else 1
        offset = sign * (int(zone[1:3]) * 60 + int(zone[3:5]))
        return datetime(int(year), _MONTHS[month.capitalize()], int(day), int(hour), int(minute), int(second),
                        tzinfo=timezone(timedelta(minutes=offset)))
    except (ValueError, KeyError):
        raise WireSyntaxError(f"an INTERNALDATE that is not a date: {text[:40]!r}") from None


def format_internaldate(when: datetime) -> bytes:
    """An aware (or naive: local) datetime as an RFC 3501 quoted date-time."""
    if when.tzinfo is None:
        when = when.astimezone()
    offset = when.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (f'"{when.day:2d}-{_MONTH_NAMES[when.month].decode()}-{when.year:04d} '
            f'{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"'
            ).encode("ascii")


def mailbox_name(name: str) -> bytes:
    """A folder name as a quoted string in modified UTF-7 (RFC 3501 sections 5.1.3, 4.3)."""
    encoded = encode_utf7(name)
    return b'"' + encoded.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def flag_list(flags: Sequence[str]) -> bytes:
    return b"(" + " ".join(flags).encode("utf-8") + b")"


@dataclass(frozen=True)
class AppendItem:
    """One message of an APPEND: flags, INTERNALDATE (None: the server's clock) and the exact bytes."""

    flags: Sequence[str]
    internaldate: datetime | None
    raw: bytes


def append_command(tag: bytes, mailbox: str, items: Sequence[AppendItem]) -> list[bytes]:
    """A (MULTI)APPEND with non-synchronising literals (RFC 3502, RFC 7888 LITERAL+) as pieces to send in order.

    The message bytes are pieces of their own, so nothing copies them.
    """
    if not items:
        raise ValueError("an APPEND without messages")
    pieces = [tag + b" APPEND " + mailbox_name(mailbox)]
    for item in items:
        head = b" " + flag_list(item.flags)
        if item.internaldate is not None:
            head += b" " + format_internaldate(item.internaldate)
        pieces.append(head + b" {" + str(len(item.raw)).encode("ascii") + b"+}\r\n")
        pieces.append(item.raw)
    pieces.append(b"\r\n")
    return pieces


_UID_ITEM = re.compile(rb"[( ]UID (\d+)", re.IGNORECASE)
_SIZE_ITEM = re.compile(rb"[( ]RFC822\.SIZE (\d+)", re.IGNORECASE)


def sizes_command(tag: bytes, from_uid: int) -> bytes:
    """``UID FETCH from:* (UID RFC822.SIZE)``: every message from `from_uid` on, without a SEARCH first."""
    return tag + b" UID FETCH " + str(max(from_uid, 1)).encode("ascii") + b":* (UID RFC822.SIZE)\r\n"


def parse_size(line: bytes) -> tuple[int, int] | None:
    """UID and RFC822.SIZE of an untagged FETCH line, or None when it lacks either (e.g. a flags update)."""
    if not is_fetch(line):
        return None
    uid, size = _UID_ITEM.search(line, 8), _SIZE_ITEM.search(line, 8)
    if uid is None or size is None:
        return None
    return int(uid.group(1)), int(size.group(1))
