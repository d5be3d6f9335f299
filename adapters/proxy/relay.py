"""After login: the client's bytes relayed to its backend and back.

`relay` copies both ways untouched. The read-only relays serve the migration
account while a mailbox is being moved: what the client sends passes a screen
first, so that only commands that change nothing reach the backend.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Callable, Iterable, Iterator

import trio

from mailmigrator.adapters.proxy.backends import BackendSession
from mailmigrator.adapters.proxy.imap_protocol import ContinuationNeeded, Framed, ImapCommandReader, InputRefused
from mailmigrator.adapters.proxy.pop3_protocol import Pop3LineReader
from mailmigrator.adapters.proxy.protocol_errors import imap_reply

RELAY_CHUNK = 256 * 1024
# Commands a user may send in the migration account: nothing that changes it.
NOTICE_IMAP_COMMANDS = frozenset({
    "CAPABILITY", "NOOP", "LOGOUT", "SELECT", "EXAMINE", "LIST", "LSUB", "STATUS", "FETCH",
    "SEARCH", "CHECK", "CLOSE", "UNSELECT", "NAMESPACE", "ID", "ENABLE", "GETQUOTAROOT", "GETQUOTA",
})
NOTICE_UID_COMMANDS = frozenset({"FETCH", "SEARCH"})
NOTICE_POP3_COMMANDS = frozenset({"STAT", "LIST", "UIDL", "RETR", "TOP", "NOOP", "QUIT", "CAPA", "RSET"})
# A refused command is sent on as this harmless one under the same tag, so the
# backend answers NO in its proper place in the response stream.
_READ_ONLY_PROBE = b' STATUS "Migration in progress: this mailbox is read-only" (MESSAGES)\r\n'
_READ_ONLY_POP3_REFUSAL = b"-ERR [SYS/PERM] Migration in progress: this mailbox is read-only.\r\n"
_MOVED_POP3_REPLY = b"-ERR [IN-USE] Your mailbox has moved to the new server; please connect again.\r\n"
_POP3_LINE_TOO_LONG = b"-ERR Line too long.\r\n"

CONNECTION_ENDS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ssl.SSLError, OSError)
"""What ends a connection or a relay quietly: a side gone, TLS broken, or a peer not reading for `send_timeout`."""

NoticeReply = tuple[bytes, bytes, bool]
"""What one piece of client input becomes: bytes for the backend, bytes for the client, and whether to hang up."""

Screen = Callable[[bytes], Iterable[NoticeReply]]
"""Turns what the client sent into `NoticeReply`s, in order."""


async def _send(stream: trio.abc.Stream, data: bytes | bytearray, timeout: float) -> None:
    with trio.fail_after(timeout):
        await stream.send_all(data)


@contextlib.contextmanager
def _ending_relay(scope: trio.CancelScope) -> Iterator[None]:
    """One direction of a relay: when it stops, quietly for `CONNECTION_ENDS`, the other direction stops too."""
    try:
        yield
    except CONNECTION_ENDS:
        pass
    finally:
        scope.cancel()


async def relay(client: trio.abc.Stream, session: BackendSession, to_backend: bytes, send_timeout: float) -> None:
    """Copy bytes both ways until either side closes or stops reading for `send_timeout` seconds."""
    backend = session.stream
    if session.pending:
        await _send(client, session.pending, send_timeout)
    if to_backend:
        await _send(backend, to_backend, send_timeout)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump, client, backend, nursery.cancel_scope, send_timeout)
        # This task pumps the other way: one task fewer per relayed connection.
        await _pump(backend, client, nursery.cancel_scope, send_timeout)


async def _pump(source: trio.abc.Stream, sink: trio.abc.Stream, scope: trio.CancelScope, send_timeout: float) -> None:
    with _ending_relay(scope):
        if isinstance(source, trio.SocketStream) and isinstance(sink, trio.SocketStream):
            await _socket_pump(source.socket, sink.socket, send_timeout)
            return
        while data := await source.receive_some(RELAY_CHUNK):
            await _send(sink, data, send_timeout)


async def _socket_pump(source: trio.socket.SocketType, sink: trio.socket.SocketType, send_timeout: float) -> None:
    """Copy bytes from one plain TCP socket to another until `source` reaches end of stream."""
    # Every byte of every proxied mailbox passes here. One buffer per trio run,
    # shared by every relay, and one scheduler pass per chunk cost less CPU than
    # receive_some/send_all, which allocate per chunk and yield twice per call
    # (bench/relay.py), and an idle relay holds no buffer at all (bench/proxy_scale.py).
    # The buffer is read into and written out with no checkpoint between; what
    # the sink does not take at once is copied out before this task waits.
    buffer = _relay_buffer()
    fd_in, fd_out = source.fileno(), sink.fileno()
    while True:
        await trio.lowlevel.checkpoint()
        count = _read_some(fd_in, buffer)
        if count < 0:
            await trio.lowlevel.wait_readable(fd_in)
            continue
        if not count:
            return
        sent = _write_some(fd_out, buffer[:count])
        if sent < count:
            await _write_fully(fd_out, memoryview(bytes(buffer[sent:count])), send_timeout)


_RELAY_BUFFER: trio.lowlevel.RunVar[memoryview] = trio.lowlevel.RunVar("relay_buffer")


def _relay_buffer() -> memoryview:
    """The one `RELAY_CHUNK` buffer the plain TCP relays of this trio run share."""
    try:
        return _RELAY_BUFFER.get()
    except LookupError:
        buffer = memoryview(bytearray(RELAY_CHUNK))
        _RELAY_BUFFER.set(buffer)
        return buffer


# The two calls below catch BlockingIOError in a frame of their own: caught in a
# relay's coroutine, the traceback would give that long-lived frame a frame
# object it keeps for as long as the relay lasts.


def _read_some(fd: int, buffer: memoryview) -> int:
    """Read what `fd` has into `buffer`: how many bytes, 0 at its end, -1 when nothing has come yet."""
    try:
        return os.readv(fd, [buffer])
    except BlockingIOError:
        return -1


def _write_some(fd: int, data: memoryview) -> int:
    """Write what `fd` takes now of `data`: how many bytes (0 when it is full)."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


async def _write_fully(fd: int, data: memoryview, send_timeout: float) -> None:
    """Write all of `data` to a non-blocking `fd`; `trio.TooSlowError` when it stays full for `send_timeout`."""
    sent = 0
    while sent < len(data):
        written = _write_some(fd, data[sent:])
        sent += written
        if not written:
            with trio.fail_after(send_timeout):
                await trio.lowlevel.wait_writable(fd)


async def relay_read_only_imap(
    client: trio.abc.Stream, session: BackendSession, leftover: bytes, reader: ImapCommandReader, send_timeout: float
) -> None:
    """Relay to the migration account, letting through only commands that change nothing.

    SELECT becomes EXAMINE (RFC 3501 section 6.3.2: nothing is changed, `\\Seen` is
    not set); anything else that could change the mailbox is answered NO by the
    backend itself, through a harmless probe under the same tag.
    """
    commands = ImapCommandReader(max_line=reader.max_line, max_literal=reader.max_literal)

    def screen(data: bytes) -> Iterator[NoticeReply]:
        for event in commands.feed(data):
            if isinstance(event, ContinuationNeeded):
                yield b"", b"+ Ready for literal data\r\n", False
            elif isinstance(event, InputRefused):
                yield b"", imap_reply(event.tag, event.error), event.error.fatal
            else:
                yield _read_only_command(event), b"", False

    await _relay_screened(client, session, leftover, screen, send_timeout)


def _read_only_command(framed: Framed) -> bytes:
    first = framed.pieces[0] if framed.pieces else b""
    words = first.split(b" ", 3)
    tag = words[0]
    name = words[1].upper() if len(words) > 1 else b""
    sub = words[2].upper() if len(words) > 2 else b""
    allowed = name.decode("ascii", "replace") in NOTICE_IMAP_COMMANDS or (
        name == b"UID" and sub.decode("ascii", "replace") in NOTICE_UID_COMMANDS
    )
    if not allowed:
        return tag + _READ_ONLY_PROBE
    if name == b"SELECT":
        pieces = (b" ".join([tag, b"EXAMINE", *words[2:]]),) + framed.pieces[1:]
        framed = Framed(pieces, framed.literals)
    return framed.raw(non_synchronising=True)


async def relay_read_only_pop3(
    client: trio.abc.Stream, session: BackendSession, leftover: bytes, send_timeout: float
) -> None:
    """Relay to the migration account over POP3; DELE and other changes are refused."""
    lines = Pop3LineReader()

    def screen(data: bytes) -> Iterator[NoticeReply]:
        for line in lines.feed(data):
            name = line.split(b" ", 1)[0].upper().decode("ascii", "replace") if isinstance(line, bytes) else ""
            if isinstance(line, bytes) and name in NOTICE_POP3_COMMANDS:
                yield line + b"\r\n", b"", False
            else:
                yield b"", _READ_ONLY_POP3_REFUSAL, False

    await _relay_screened(client, session, leftover, screen, send_timeout)


async def relay_pop3_until_moved(
    client: trio.abc.Stream, session: BackendSession, leftover: bytes, send_timeout: float,
    moved: Callable[[], bool],
) -> None:
    """Relay a POP3 session with the old server until `moved()`: the client's next command is then
    answered -ERR and the connection ends, so that a download in progress finishes first."""
    lines = Pop3LineReader()

    def screen(data: bytes) -> Iterator[NoticeReply]:
        for line in lines.feed(data):
            if moved():
                yield b"", _MOVED_POP3_REPLY, True
                return
            if isinstance(line, bytes):
                yield line + b"\r\n", b"", False
            else:
                yield b"", _POP3_LINE_TOO_LONG, False

    await _relay_screened(client, session, leftover, screen, send_timeout)


async def _relay_screened(
    client: trio.abc.Stream, session: BackendSession, leftover: bytes, screen: Screen, send_timeout: float
) -> None:
    """Relay both ways, passing what the client sends through `screen` first."""
    backend = session.stream
    client_lock = trio.Lock()
    if session.pending:
        await _send(client, session.pending, send_timeout)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            _client_to_backend, client, backend, client_lock, leftover, screen, nursery.cancel_scope, send_timeout
        )
        nursery.start_soon(_backend_to_client, backend, client, client_lock, nursery.cancel_scope, send_timeout)


async def _client_to_backend(
    client: trio.abc.Stream, backend: trio.abc.Stream, client_lock: trio.Lock, leftover: bytes, screen: Screen,
    scope: trio.CancelScope, send_timeout: float,
) -> None:
    """Screen the client's input (`leftover` first) until it closes or a reply says to hang up, then end the relay."""
    with _ending_relay(scope):
        data: bytes | bytearray = leftover
        while True:
            for to_backend, to_client, hang_up in screen(bytes(data)):
                if to_backend:
                    await _send(backend, to_backend, send_timeout)
                if to_client:
                    async with client_lock:
                        await _send(client, to_client, send_timeout)
                if hang_up:
                    return
            data = await client.receive_some(RELAY_CHUNK)
            if not data:
                return


async def _backend_to_client(
    backend: trio.abc.Stream, client: trio.abc.Stream, client_lock: trio.Lock, scope: trio.CancelScope,
    send_timeout: float,
) -> None:
    """Copy the backend's bytes to the client until either side closes, then end the relay."""
    with _ending_relay(scope):
        while data := await backend.receive_some(RELAY_CHUNK):
            async with client_lock:
                await _send(client, data, send_timeout)
