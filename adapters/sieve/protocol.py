"""ManageSieve (RFC 5804) without a socket: server bytes in, lines and responses out; client commands as bytes.

The reader keeps what it was fed and hands out one complete line at a time:
atoms, strings (quoted or literal) and parenthesised response codes. Every
size is bounded (`SieveLimits`); a server that sends more, or bytes the grammar
does not allow, ends the connection with `SieveProtocolError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailmigrator.adapters.mail.connection import MailConnectionError


class SieveProtocolError(MailConnectionError):
    """The server sent something RFC 5804 does not allow, or more than a limit."""


@dataclass(frozen=True)
class SieveLimits:
    """What one connection accepts from the server."""

    # One line without its literals: capability lines and LISTSCRIPTS entries are short.
    max_line: int = 8192
    # One literal: a script (Dovecot's default sieve_max_script_size is 1 MiB) or a long reason.
    max_literal: int = 1 << 20
    # Data lines before the OK/NO/BYE of one command (LISTSCRIPTS entries, capabilities).
    max_lines: int = 1000


@dataclass(frozen=True)
class Atom:
    """A bare word: OK, NO, BYE, ACTIVE, a response code's name."""

    text: str


@dataclass(frozen=True)
class String:
    """A quoted string or a literal, as the octets sent (scripts are kept as bytes)."""

    data: bytes

    @property
    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise SieveProtocolError("the server sent a string that is not UTF-8") from None


@dataclass(frozen=True)
class Code:
    """A parenthesised response code, e.g. ``(QUOTA/MAXSIZE)`` or ``(SASL "...")``; RFC 5804 section 1.3."""

    items: tuple[Atom | String, ...]

    @property
    def name(self) -> str:
        first = self.items[0] if self.items else None
        return first.text.upper() if isinstance(first, Atom) else ""


Token = Atom | String | Code


@dataclass(frozen=True)
class Response:
    """The end of a command: OK, NO or BYE with an optional code and text, and the data lines before it."""

    status: str
    code: str = ""
    text: str = ""
    lines: tuple[tuple[Token, ...], ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "OK"


_STATUSES = frozenset({"OK", "NO", "BYE"})
_ATOM = re.compile(rb"[^\x00-\x20\x7f\"(){}]+")
_LITERAL = re.compile(rb"\{([0-9]{1,10})(\+?)\}\r\n")


class _NeedMore(Exception):
    pass


@dataclass
class SieveReader:
    """Lines from the server's bytes, as fed; `next_line` is None until a whole line is there."""

    limits: SieveLimits = field(default_factory=SieveLimits)
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_line(self) -> tuple[Token, ...] | None:
        """The next complete line's tokens, or None when more bytes are needed."""
        try:
            tokens, end = _Line(bytes(self._buffer), self.limits).parse()
        except _NeedMore:
            return None
        del self._buffer[:end]
        return tokens

    def next_response(self, collected: list[tuple[Token, ...]]) -> Response | None:
        """Read lines into `collected` until OK, NO or BYE; that line as a `Response` with the data lines."""
        while (line := self.next_line()) is not None:
            if line and isinstance(line[0], Atom) and line[0].text.upper() in _STATUSES:
                return status_response(line, tuple(collected))
            collected.append(line)
            if len(collected) > self.limits.max_lines:
                raise SieveProtocolError(f"the server sent more than {self.limits.max_lines} lines for one command")
        return None


def status_response(line: tuple[Token, ...], lines: tuple[tuple[Token, ...], ...] = ()) -> Response:
    """An OK/NO/BYE line: ``status [SP "(" resp-code ")"] [SP string]`` (RFC 5804 section 4)."""
    status = line[0].text.upper() if isinstance(line[0], Atom) else ""
    rest = list(line[1:])
    code = ""
    first = rest[0] if rest else None
    if isinstance(first, Code):
        code = " ".join(item.text for item in first.items)
        rest.pop(0)
    text = ""
    first = rest[0] if rest else None
    if isinstance(first, String):
        text = first.text
        rest.pop(0)
    if rest:
        raise SieveProtocolError(f"the server's {status} line has more than a code and a text")
    return Response(status, code, text, lines)


class _Line:
    """One pass over the buffer from its start to the first CRLF outside a literal."""

    def __init__(self, data: bytes, limits: SieveLimits) -> None:
        self.data = data
        self.limits = limits
        self.at = 0
        # Octets of the line outside literals, held to `max_line`.
        self.outside = 0

    def parse(self) -> tuple[tuple[Token, ...], int]:
        tokens: list[Token] = []
        while True:
            if self.peek(2) == b"\r\n":
                self.at += 2
                return tuple(tokens), self.at
            if tokens:
                self.expect(b" ")
            tokens.append(self.token(in_code=False))

    def peek(self, n: int) -> bytes:
        chunk = self.data[self.at:self.at + n]
        if len(chunk) < n:
            self.check_line_length(len(self.data) - self.at)
            raise _NeedMore
        return chunk

    def check_line_length(self, more: int) -> None:
        if self.outside + more > self.limits.max_line:
            raise SieveProtocolError(f"the server sent a line longer than {self.limits.max_line} octets")

    def advance(self, n: int) -> bytes:
        chunk = self.peek(n)
        self.check_line_length(n)
        self.outside += n
        self.at += n
        return chunk

    def expect(self, octets: bytes) -> None:
        if self.peek(len(octets)) != octets:
            raise SieveProtocolError(f"the server sent {self.peek(1)!r} where {octets!r} belongs")
        self.advance(len(octets))

    def token(self, *, in_code: bool) -> Token:
        first = self.peek(1)
        if first == b'"':
            return self.quoted()
        if first == b"{":
            return self.literal()
        if first == b"(" and not in_code:
            return self.code()
        match = _ATOM.match(self.data, self.at)
        if match is None:
            raise SieveProtocolError(f"the server sent {first!r} where a word belongs")
        if match.end() == len(self.data):
            self.check_line_length(match.end() - self.at)
            raise _NeedMore
        return Atom(self.advance(match.end() - self.at).decode("ascii"))

    def quoted(self) -> String:
        """``DQUOTE *QUOTED-CHAR DQUOTE``: UTF-8 without CR or LF; only ``\\"`` and ``\\\\`` escaped (section 4)."""
        self.advance(1)
        out = bytearray()
        while True:
            octet = self.advance(1)
            if octet == b'"':
                return String(bytes(out))
            if octet in (b"\r", b"\n", b"\0"):
                raise SieveProtocolError("the server sent CR, LF or NUL inside a quoted string")
            if octet == b"\\":
                octet = self.advance(1)
                if octet not in (b'"', b"\\"):
                    raise SieveProtocolError(f"the server escaped {octet!r} in a quoted string")
            out += octet

    def literal(self) -> String:
        """``"{" number "}" CRLF *OCTET`` (literal-s2c; a server never sends "+")."""
        head = self.data[self.at:self.at + 16]
        match = _LITERAL.match(head)
        if match is None:
            if b"\r\n" in head or len(head) == 16:
                raise SieveProtocolError("the server sent a malformed literal length")
            self.check_line_length(len(head))
            raise _NeedMore
        size = int(match.group(1))
        if match.group(2):
            raise SieveProtocolError("the server sent a non-synchronising literal, which only clients may")
        if size > self.limits.max_literal:
            raise SieveProtocolError(f"the server announced a string of {size} octets; "
                                     f"at most {self.limits.max_literal} are accepted")
        self.advance(match.end())
        start = self.at
        if len(self.data) - start < size:
            raise _NeedMore
        self.at += size
        return String(self.data[start:start + size])

    def code(self) -> Code:
        self.advance(1)
        items: list[Atom | String] = []
        while self.peek(1) != b")":
            if items:
                self.expect(b" ")
            token = self.token(in_code=True)
            assert not isinstance(token, Code)
            items.append(token)
        self.advance(1)
        if not items:
            raise SieveProtocolError("the server sent an empty response code")
        return Code(tuple(items))


# -- client commands ---------------------------------------------------------

# A name or string sent quoted: short, no quote, backslash or line break; anything else goes as a literal.
_QUOTABLE = re.compile(rb"[^\"\\\r\n\x00]{0,1000}")


def string(value: str | bytes) -> bytes:
    """A client string: quoted when that is safe, else a non-synchronising literal ``{n+}`` (section 4)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if _QUOTABLE.fullmatch(data):
        return b'"' + data + b'"'
    return b"{%d+}\r\n" % len(data) + data


def command(name: str, *arguments: str | bytes) -> bytes:
    """One command line: the name and each argument as a string, CRLF-terminated."""
    return b" ".join([name.encode("ascii"), *(string(a) for a in arguments)]) + b"\r\n"


def put_script_command(name: str, content: bytes) -> bytes:
    """``PUTSCRIPT name {n+} CRLF content CRLF`` (RFC 5804 section 2.6): the script always as a literal."""
    return b"PUTSCRIPT " + string(name) + b" {%d+}\r\n" % len(content) + content + b"\r\n"


def script_listing(response: Response) -> list[tuple[str, bool]]:
    """LISTSCRIPTS data lines: ``sieve-name [SP "ACTIVE"]`` (section 2.7): (name, active) each."""
    scripts = []
    for line in response.lines:
        if not line or not isinstance(line[0], String) or len(line) > 2:
            raise SieveProtocolError("the server sent a LISTSCRIPTS line that is not a script name")
        active = len(line) == 2
        if active and not (isinstance(line[1], Atom) and line[1].text.upper() == "ACTIVE"):
            raise SieveProtocolError("the server sent a LISTSCRIPTS line with something other than ACTIVE")
        scripts.append((line[0].text, active))
    if sum(active for _, active in scripts) > 1:
        raise SieveProtocolError("the server listed more than one active script")
    return scripts


def capabilities(lines: tuple[tuple[Token, ...], ...]) -> dict[str, str]:
    """Capability lines ``string [SP string]`` (section 1.7), by upper-cased name."""
    found = {}
    for line in lines:
        if not line or len(line) > 2 or not all(isinstance(t, String) for t in line):
            raise SieveProtocolError("the server sent a capability line that is not one or two strings")
        name = line[0]
        value = line[1] if len(line) == 2 else None
        assert isinstance(name, String)
        found[name.text.upper()] = value.text if isinstance(value, String) else ""
    return found


def script_body(response: Response) -> bytes:
    """GETSCRIPT's one data line: the script as a string (section 2.9)."""
    if len(response.lines) != 1 or len(response.lines[0]) != 1 or not isinstance(response.lines[0][0], String):
        raise SieveProtocolError("the server's GETSCRIPT answer is not one string")
    return response.lines[0][0].data
