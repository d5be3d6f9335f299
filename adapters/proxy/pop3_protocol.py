"""POP3 pre-authentication parsing: bytes in, commands out. No sockets here.

RFC 1939 (USER/PASS, QUIT), RFC 2449 (CAPA, response codes), RFC 2595
section 4 (STLS), RFC 5034 (AUTH, initial response) with PLAIN (RFC 4616).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailmigrator.adapters.proxy.protocol_errors import CommandSyntaxError

# RFC 2449 section 4: a command line is at most 255 octets; AUTH lines may be
# longer (RFC 5034 section 4 raises the limit for them), so we allow more.
DEFAULT_MAX_LINE = 2048

PRE_AUTH_COMMANDS = frozenset({"CAPA", "STLS", "USER", "PASS", "AUTH", "QUIT", "NOOP"})


@dataclass(frozen=True)
class Pop3Command:
    """A parsed POP3 command: upper-cased name and its arguments."""

    name: str
    args: tuple[str, ...] = ()

    def __repr__(self) -> str:  # PASS and AUTH carry secrets
        if self.name in ("PASS", "AUTH"):
            return f"Pop3Command(name={self.name!r}, args=[redacted])"
        return f"Pop3Command(name={self.name!r}, args={self.args!r})"


@dataclass(frozen=True)
class LineTooLong:
    """A line over the limit, discarded up to its end."""


@dataclass(slots=True)
class Pop3LineReader:
    """Splits POP3 input into lines; an oversized line is skipped, never buffered.

    `receive` + `next_line` split lazily, so `unconsumed` is every byte after
    the last line taken, exactly as sent.
    """

    max_line: int = DEFAULT_MAX_LINE
    _buffer: bytearray = field(default_factory=bytearray)
    _discarding: bool = False

    def feed(self, data: bytes) -> list[bytes | LineTooLong]:
        """Take more input; return the lines it completes, in order."""
        self.receive(data)
        return list(iter(self.next_line, None))

    def receive(self, data: bytes) -> None:
        """Take more input without splitting it yet."""
        self._buffer += data

    def unconsumed(self) -> bytes:
        """Every byte received after the last line returned (nothing of a discarded line)."""
        return bytes(self._buffer)

    def next_line(self) -> bytes | LineTooLong | None:
        """The next line (without CRLF) the input so far completes; None when more input is needed."""
        end = self._buffer.find(b"\n")
        if end < 0:
            # One byte more than max_line may be the CR of a line that fits.
            if len(self._buffer) > self.max_line + 1:
                self._discarding = True
            if self._discarding:
                self._buffer.clear()
            return None
        line = bytes(self._buffer[:end])
        if line.endswith(b"\r"):
            line = line[:-1]
        del self._buffer[: end + 1]
        if self._discarding or len(line) > self.max_line:
            self._discarding = False
            return LineTooLong()
        return line


def parse_pop3_command(line: bytes) -> Pop3Command:
    """Parse one command line; `CommandSyntaxError` when it is not one."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandSyntaxError("Command is not UTF-8.") from None
    if any(ord(c) < 32 and c != "\t" for c in text):
        raise CommandSyntaxError("Control character in command.")
    name, _, rest = text.partition(" ")
    name = name.upper()
    if not name or not name.isalpha() or len(name) > 4:
        raise CommandSyntaxError("Unknown command.")
    if name == "PASS":
        # RFC 1939 section 7: the password is the rest of the line; spaces included.
        if not rest:
            raise CommandSyntaxError("PASS needs a password.")
        return Pop3Command(name, (rest,))
    args = tuple(rest.split()) if rest else ()
    if name in ("CAPA", "STLS", "QUIT", "NOOP") and args:
        raise CommandSyntaxError(f"{name} takes no arguments.")
    if name == "USER" and len(args) != 1:
        raise CommandSyntaxError("USER needs one user name.")
    if name == "AUTH" and len(args) > 2:
        raise CommandSyntaxError("AUTH takes a mechanism and an optional initial response.")
    return Pop3Command(name, args)
