"""IMAP pre-authentication parsing: bytes in, commands out. No sockets here.

`ImapCommandReader` frames client input into whole commands, literals
included (RFC 3501 section 4.3 / RFC 9051 section 4.3; non-synchronising
literals per RFC 7888), and refuses lines and literals over the configured
limits without buffering them. `parse_command` turns a framed command into a
`Command`; `decode_sasl_plain` reads an AUTHENTICATE PLAIN response
(RFC 4616). The connection loop in `imap_session` owns the stream.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from mailmigrator.adapters.proxy.protocol_errors import CommandSyntaxError

DEFAULT_MAX_LINE = 8192
DEFAULT_MAX_LITERAL = 64 * 1024

# Commands the proxy answers itself before login; everything else is BAD there.
PRE_AUTH_COMMANDS = frozenset(
    {"CAPABILITY", "STARTTLS", "LOGIN", "AUTHENTICATE", "ID", "NOOP", "LOGOUT"}
)

_LITERAL_AT_END = re.compile(rb"\{(\d{1,10})(\+?)\}$")
# RFC 3501 section 9: tag = 1*<any ASTRING-CHAR except "+">; ATOM-CHAR excludes
# "(" ")" "{" SP CTL "%" "*" DQUOTE "\" "]".
_ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0, 32)) | {127}


@dataclass(frozen=True)
class Literal:
    """Literal data that was part of a command."""

    data: bytes


@dataclass(frozen=True)
class Framed:
    """One whole command as read: line pieces between literals, and the literals."""

    pieces: tuple[bytes, ...]
    literals: tuple[bytes, ...]

    def raw(self, non_synchronising: bool = True) -> bytes:
        """The command as bytes to forward, literals rewritten as `{n+}` (RFC 7888)."""
        out = bytearray()
        for index, piece in enumerate(self.pieces):
            out += piece
            if index < len(self.literals):
                literal = self.literals[index]
                plus = b"+" if non_synchronising else b""
                out += b"{%d%s}\r\n" % (len(literal), plus) + literal
        return bytes(out) + b"\r\n"


@dataclass(frozen=True)
class ContinuationNeeded:
    """The client sent a synchronising literal: answer `+` so it sends the data."""


@dataclass(frozen=True)
class InputRefused:
    """Input the reader refused; `tag` is the command's tag when it could be read."""

    tag: str
    error: CommandSyntaxError


ReaderEvent = Framed | ContinuationNeeded | InputRefused


@dataclass(slots=True)
class ImapCommandReader:
    """Frames IMAP client input into commands (pure: feed bytes, take events).

    A line longer than `max_line` is discarded up to its end and refused; a
    synchronising literal over `max_literal` is refused before the client
    sends it (no continuation is given, RFC 3501 section 7.5); an oversized
    non-synchronising literal is refused as fatal, because the stream cannot
    be resynchronised without reading it (RFC 7888 section 4), and the reader
    gives no events after it.

    `receive` + `next_event` frame lazily, one event at a time, so that
    `unconsumed` is every byte after the last event taken, exactly as sent:
    what a client pipelined after its login goes to the backend unchanged.
    """

    max_line: int = DEFAULT_MAX_LINE
    max_literal: int = DEFAULT_MAX_LITERAL
    _buffer: bytearray = field(default_factory=bytearray)
    _pieces: list[bytes] = field(default_factory=list)
    _literals: list[bytes] = field(default_factory=list)
    _literal_left: int = 0
    _literal: bytearray = field(default_factory=bytearray)
    # The bytes of the command being framed, as received (lines and literals).
    _command_raw: bytearray = field(default_factory=bytearray)
    _discarding: bool = False
    _discard_tag: str = "*"
    _total: int = 0
    _raw_lines: bool = False
    _failed: bool = False

    def feed(self, data: bytes) -> list[ReaderEvent]:
        """Take more input; return the events it completes, in order."""
        self.receive(data)
        return list(iter(self.next_event, None))

    def receive(self, data: bytes) -> None:
        """Take more input without framing it yet."""
        self._buffer += data

    def unconsumed(self) -> bytes:
        """Every byte received after the last event returned, as received (nothing of a discarded line)."""
        return bytes(self._command_raw) + bytes(self._buffer)

    def next_event(self) -> ReaderEvent | None:
        """The next event the input received so far completes; None when more input is needed."""
        while not self._failed:
            if self._literal_left:
                if not self._take_literal():
                    return None
                continue
            end = self._buffer.find(b"\n")
            if end < 0:
                self._hold_partial_line()
                return None
            raw = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            event = self._line_event(raw)
            if event is not None:
                return event
        return None

    def _take_literal(self) -> bool:
        """Move what has arrived of the current literal out of the buffer; True once the literal is whole."""
        take = min(self._literal_left, len(self._buffer))
        chunk = self._buffer[:take]
        self._literal += chunk
        self._command_raw += chunk
        del self._buffer[:take]
        self._literal_left -= take
        if self._literal_left:
            return False
        self._literals.append(bytes(self._literal))
        self._literal.clear()
        return True

    def _hold_partial_line(self) -> None:
        """Keep an unfinished line, or drop it once it is too long (it is refused when its end arrives)."""
        # One byte more than max_line may be the CR of a line that fits.
        if len(self._buffer) > self.max_line + 1 and not self._discarding:
            # Too long: forget what we have, skip to the end of the line.
            self._discarding = True
            self._discard_tag = _tag_of(self._pieces[0] if self._pieces else bytes(self._buffer))
            self._command_raw.clear()
        if self._discarding:
            self._buffer.clear()

    def _line_event(self, raw: bytes) -> ReaderEvent | None:
        """The event one whole line (`raw` ends with LF) completes; None when a literal follows without a `+`."""
        line = raw[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._discarding or len(line) > self.max_line:
            tag = self._discard_tag if self._discarding else _tag_of(self._pieces[0] if self._pieces else line)
            self._reset()
            return InputRefused(tag, CommandSyntaxError("Line too long.", "TOOBIG"))
        if self._raw_lines:
            return Framed((line,), ())
        self._command_raw += raw
        match = _LITERAL_AT_END.search(line)
        if match is None:
            self._pieces.append(line)
            framed = Framed(tuple(self._pieces), tuple(self._literals))
            self._reset()
            return framed
        return self._literal_announced(line, match)

    def _literal_announced(self, line: bytes, match: re.Match[bytes]) -> ReaderEvent | None:
        """A line ending in `{N}` or `{N+}`: refuse the literal if too big, else expect its N bytes."""
        size, plus = int(match.group(1)), bool(match.group(2))
        self._total += size + len(line)
        if size > self.max_literal or self._total > self.max_literal + 4 * self.max_line:
            tag = _tag_of(self._pieces[0] if self._pieces else line)
            self._reset()
            self._failed = plus
            return InputRefused(tag, CommandSyntaxError("Literal too big.", "TOOBIG", fatal=plus))
        self._pieces.append(line[: match.start()])
        self._literal_left = size
        if size == 0:
            self._literals.append(b"")
        return None if plus else ContinuationNeeded()

    def expect_raw_lines(self, raw: bool) -> None:
        """While on, every line is returned as is (SASL responses, RFC 3501 section 6.2.2)."""
        self._raw_lines = raw

    def _reset(self) -> None:
        self._pieces.clear()
        self._literals.clear()
        self._command_raw.clear()
        self._discarding = False
        self._discard_tag = "*"
        self._total = 0


def _tag_of(line: bytes) -> str:
    head = line.split(b" ", 1)[0]
    if head and all(b not in _ATOM_SPECIALS and b != ord("+") for b in head) and len(head) <= 64:
        return head.decode("ascii", "replace")
    return "*"


@dataclass(frozen=True)
class Command:
    """A parsed client command: tag, upper-cased name, and its arguments.

    Arguments are `str` for atoms and strings (UTF-8, RFC 6855 style), `None`
    for NIL, and `list` for parenthesised lists.
    """

    tag: str
    name: str
    args: tuple[object, ...] = ()

    def __repr__(self) -> str:  # never show LOGIN/AUTHENTICATE arguments
        if self.name in ("LOGIN", "AUTHENTICATE"):
            return f"Command(tag={self.tag!r}, name={self.name!r}, args=[redacted])"
        return f"Command(tag={self.tag!r}, name={self.name!r}, args={self.args!r})"


def parse_command(framed: Framed) -> Command:
    """Parse a framed command; `CommandSyntaxError` says what is wrong (its tag in `.tag`)."""
    tokens = _Tokenizer(framed).tokens()
    if not tokens or not isinstance(tokens[0], _Atom):
        raise _syntax("*", "Missing tag.")
    tag = tokens[0].text
    if not tag or "+" in tag:
        raise _syntax("*", "Invalid tag.")
    if len(tokens) < 2 or not isinstance(tokens[1], _Atom):
        raise _syntax(tag, "Missing command.")
    name = tokens[1].text.upper()
    args = tuple(_values(tokens[2:], tag))
    command = Command(tag, name, args)
    _check_arity(command)
    return command


def parse_sasl_line(line: bytes) -> bytes | None:
    """A client's base64 SASL response; None when it cancels with `*` (RFC 3501 section 6.2.2)."""
    text = line.strip()
    if text == b"*":
        return None
    return _b64decode(text)


def decode_sasl_plain(response: bytes) -> tuple[str, str, str]:
    """Split a PLAIN response into (authzid, authcid, password); RFC 4616 section 2."""
    parts = response.split(b"\x00")
    if len(parts) != 3 or not parts[1]:
        raise CommandSyntaxError("Invalid PLAIN response.")
    try:
        authzid, authcid, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise CommandSyntaxError("PLAIN response is not UTF-8.") from None
    return authzid, authcid, password


def decode_initial_response(argument: str) -> bytes:
    """SASL-IR initial response: `=` means an empty one (RFC 4959 section 3)."""
    if argument == "=":
        return b""
    return _b64decode(argument.encode("ascii", "replace"))


def _b64decode(text: bytes) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CommandSyntaxError("Invalid base64 data.") from None


def quote(text: str) -> bytes:
    """An IMAP string for `text`: quoted when safe, else a non-synchronising literal."""
    data = text.encode("utf-8")
    if all(32 <= b < 127 for b in data) and len(data) < 1000:
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d+}\r\n" % len(data) + data


def _check_arity(command: Command) -> None:
    n = len(command.args)
    name = command.name
    if name in ("CAPABILITY", "STARTTLS", "NOOP", "LOGOUT") and n:
        raise _syntax(command.tag, f"{name} takes no arguments.")
    if name == "LOGIN":
        if n != 2 or not all(isinstance(a, str) for a in command.args):
            raise _syntax(command.tag, "LOGIN needs a user name and a password.")
    if name == "AUTHENTICATE":
        if n not in (1, 2) or not all(isinstance(a, str) for a in command.args):
            raise _syntax(command.tag, "AUTHENTICATE needs a mechanism name.")
    if name == "ID" and (n != 1 or not (command.args[0] is None or isinstance(command.args[0], list))):
        raise _syntax(command.tag, "ID needs NIL or a parenthesised list.")


def _syntax(tag: str, text: str) -> CommandSyntaxError:
    return CommandSyntaxError(text, tag=tag)


@dataclass(frozen=True)
class _Atom:
    text: str


@dataclass(frozen=True)
class _String:
    text: str


class _Open:
    pass


class _Close:
    pass


_Token = _Atom | _String | _Open | _Close


class _Tokenizer:
    def __init__(self, framed: Framed) -> None:
        self.framed = framed

    def tokens(self) -> list[_Token]:
        out: list[_Token] = []
        tag = _tag_of(self.framed.pieces[0]) if self.framed.pieces else "*"
        for index, piece in enumerate(self.framed.pieces):
            out += self._line_tokens(piece, tag)
            if index < len(self.framed.literals):
                out.append(_String(_text(self.framed.literals[index], tag)))
        return out

    def _line_tokens(self, line: bytes, tag: str) -> list[_Token]:
        out: list[_Token] = []
        i, n = 0, len(line)
        while i < n:
            c = line[i]
            if c == 0x20:
                i += 1
            elif c == ord("("):
                out.append(_Open())
                i += 1
            elif c == ord(")"):
                out.append(_Close())
                i += 1
            elif c == ord('"'):
                # RFC 3501 section 9: quoted = DQUOTE *QUOTED-CHAR DQUOTE, with \" and \\ only.
                buf = bytearray()
                i += 1
                while True:
                    if i >= n:
                        raise _syntax(tag, "Unterminated quoted string.")
                    c = line[i]
                    if c == ord("\\"):
                        if i + 1 >= n or line[i + 1] not in (ord("\\"), ord('"')):
                            raise _syntax(tag, "Invalid escape in quoted string.")
                        buf.append(line[i + 1])
                        i += 2
                    elif c == ord('"'):
                        i += 1
                        break
                    elif c in (0x0D, 0x0A, 0x00):
                        raise _syntax(tag, "Invalid character in quoted string.")
                    else:
                        buf.append(c)
                        i += 1
                out.append(_String(_text(bytes(buf), tag)))
            elif c < 0x20 or c == 0x7F:
                raise _syntax(tag, "Control character in command.")
            else:
                start = i
                while i < n and line[i] not in (0x20, ord("("), ord(")")):
                    if line[i] in (ord('"'), ord("{")) or line[i] < 0x20:
                        raise _syntax(tag, "Invalid character in atom.")
                    i += 1
                out.append(_Atom(_text(line[start:i], tag)))
        return out


def _text(data: bytes, tag: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _syntax(tag, "Argument is not UTF-8.") from None


def _values(tokens: list[_Token], tag: str) -> list[object]:
    stack: list[list[object]] = [[]]
    for token in tokens:
        if isinstance(token, _Open):
            stack.append([])
        elif isinstance(token, _Close):
            if len(stack) == 1:
                raise _syntax(tag, "Unbalanced parenthesis.")
            inner = stack.pop()
            stack[-1].append(inner)
        elif isinstance(token, _Atom):
            stack[-1].append(None if token.text.upper() == "NIL" else token.text)
        else:
            stack[-1].append(token.text)
    if len(stack) != 1:
        raise _syntax(tag, "Unbalanced parenthesis.")
    return stack[0]
