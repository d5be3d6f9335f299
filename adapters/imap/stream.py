"""The copy engine's FETCH and APPEND written and read on an imapclient connection (blocking; worker threads).

The parsing lives in `wire`; this module owns the socket. Commands use
their own tag prefix, so they never collide with imaplib's tags, and every
command is read to its tagged completion before the connection is handed back.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator, Sequence

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from mailmigrator.adapters.imap.responses import one_line
from mailmigrator.adapters.imap.wire import (
    AppendItem,
    FetchedItems,
    WireSyntaxError,
    append_command,
    fetch_command,
    is_bye,
    is_fetch,
    literal_size,
    parse_fetch,
    parse_size,
    sizes_command,
    tagged_status,
)

# Pieces smaller than this are joined before sending; larger ones (message bodies) go out as they are.
_COALESCE = 256 * 1024
_READ_BUFFER = 1024 * 1024


class ImapStream:
    """Lean UID FETCH / APPEND on the connection of an `IMAPClient`."""

    def __init__(self, client: IMAPClient) -> None:
        # imapclient keeps its imaplib.IMAP4 private; its send/readline/read are imaplib's documented API.
        self._imap = client._imap
        self.literal_plus = client.has_capability("LITERAL+")
        self._tags = itertools.count(1)
        sock = client.socket()
        # Coalesced writes are already large; Nagle would hold the tail of each until the peer ACKs.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A large read buffer: every recv releases and retakes the GIL, which several copying
        # threads then queue for, so fewer and larger reads are faster. Nothing is buffered
        # between commands, so the reader can be swapped (imapclient's starttls does the same).
        previous, self._imap.file = self._imap.file, sock.makefile("rb", buffering=_READ_BUFFER)
        previous.close()

    def _tag(self) -> bytes:
        return b"MM%d" % next(self._tags)

    def _line(self) -> bytes:
        line = self._imap.readline()
        if not line.endswith(b"\n"):
            raise IMAPClientAbortError("connection closed by the server")
        return line

    def _response(self) -> tuple[list[bytes], list[bytes]]:
        """One response: its text segments and the literals between them."""
        segments: list[bytes] = []
        literals: list[bytes] = []
        line = self._line()
        while (size := literal_size(line)) is not None:
            segments.append(line)
            data = self._imap.read(size)
            if len(data) != size:
                raise IMAPClientAbortError("connection closed by the server inside a literal")
            literals.append(data)
            line = self._line()
        segments.append(line)
        return segments, literals

    def _finish(self, what: str, tag: bytes, first: bytes) -> bool:
        """True at the tagged completion (raising on NO/BAD); raises on BYE."""
        done = tagged_status(first, tag)
        if done is not None:
            status, text = done
            if status != "OK":
                raise IMAPClientError(f"{what} failed: {status} {one_line(text)}")
            return True
        if is_bye(first):
            raise IMAPClientAbortError(f"server said {one_line(first)}")
        return False

    def fetch(self, uids: Sequence[int]) -> Iterator[FetchedItems]:
        """UID, FLAGS, INTERNALDATE and BODY[] of `uids` in the selected folder, as the server sends them.

        Read it to the end: a half-read response leaves the connection unusable.
        """
        tag = self._tag()
        self._imap.send(fetch_command(tag, uids))
        while True:
            segments, literals = self._response()
            if self._finish("FETCH", tag, segments[0]):
                return
            if is_fetch(segments[0]):
                try:
                    yield parse_fetch(segments, literals)
                except WireSyntaxError as e:
                    raise IMAPClientAbortError(f"unreadable FETCH response: {e}") from None

    def sizes(self, from_uid: int = 1) -> dict[int, int]:
        """UID -> RFC822.SIZE of the selected folder's messages with UID >= `from_uid`."""
        tag = self._tag()
        self._imap.send(sizes_command(tag, from_uid))
        out: dict[int, int] = {}
        while True:
            segments, _ = self._response()
            first = segments[0]
            if self._finish("FETCH RFC822.SIZE", tag, first):
                # "N:*" names the last message even when every UID is below N (RFC 3501 section 6.4.8).
                return {uid: size for uid, size in out.items() if uid >= from_uid}
            parsed = parse_size(first)
            if parsed is not None:
                out[parsed[0]] = parsed[1]

    def append(self, mailbox: str, items: Sequence[AppendItem]) -> tuple[str, bytes]:
        """One (MULTI)APPEND with LITERAL+ (the caller checks `literal_plus`): the tagged status and its text."""
        tag = self._tag()
        pending: list[bytes] = []
        held = 0
        for piece in append_command(tag, mailbox, items):
            if len(piece) >= _COALESCE:
                if pending:
                    self._imap.send(b"".join(pending))
                    pending, held = [], 0
                self._imap.send(piece)
                continue
            pending.append(piece)
            held += len(piece)
            if held >= _COALESCE:
                self._imap.send(b"".join(pending))
                pending, held = [], 0
        if pending:
            self._imap.send(b"".join(pending))
        while True:
            segments, _ = self._response()
            first = segments[0]
            done = tagged_status(first, tag)
            if done is not None:
                return done
            if is_bye(first):
                raise IMAPClientAbortError(f"server said {one_line(first)}")
