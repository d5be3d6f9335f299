"""Writing the new server over IMAP as the user, through the master user (blocking; run in a worker thread)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from mailmigrator.adapters.imap.connection import (
    close_imap,
    imap_failure,
    listed_folders,
    namespace_of,
    open_imap,
)
from mailmigrator.adapters.imap.responses import is_transient_response, one_line, parse_appenduid
from mailmigrator.adapters.imap.stream import ImapStream
from mailmigrator.adapters.imap.wire import AppendItem
from mailmigrator.adapters.mail.connection import LoginPlan, ServerAddress, TransientFailure
from mailmigrator.adapters.mail.message_source import FetchedMessage
from mailmigrator.domain.fingerprint import Fingerprint, fingerprint
from mailmigrator.domain.folders import ListedFolder, Namespace, special_use_names


@dataclass
class AppendOutcome:
    """What the target did with a batch: accepted messages, refusals with the server's reason, and its UIDNEXT."""

    accepted: list[FetchedMessage] = field(default_factory=list)
    refused: list[tuple[FetchedMessage, str]] = field(default_factory=list)
    uidvalidity: int = 0
    uidnext: int = 0


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@contextlib.contextmanager
def _failure_named(what: str) -> Iterator[None]:
    """An IMAP reply that refuses becomes a failure naming `what`; a lost connection propagates as it is."""
    try:
        yield
    except IMAPClientAbortError:
        raise
    except IMAPClientError as e:
        raise imap_failure(e, what) from None


class ImapTarget:
    """A connection to the new server logged in as one user through the master user."""

    def __init__(self, address: ServerAddress, plan: LoginPlan) -> None:
        self.address = address
        self.client: IMAPClient = open_imap(address, plan)
        self.multiappend = self.client.has_capability("MULTIAPPEND")
        self.stream = ImapStream(self.client)

    def namespace(self) -> Namespace:
        return namespace_of(self.client)

    def list_folders(self) -> list[ListedFolder]:
        return listed_folders(self.client)

    def special_use(self) -> dict[str, str]:
        """Special use (``\\Sent``) -> the target's folder name for it (RFC 6154)."""
        return special_use_names(self.list_folders())

    def ensure_folder(self, name: str) -> None:
        """CREATE unless it exists (RFC 5530 ALREADYEXISTS is success here)."""
        try:
            self.client.create_folder(name)
        except IMAPClientAbortError:
            raise
        except IMAPClientError as e:
            if "ALREADYEXISTS" in str(e).upper() or self.client.folder_exists(name):
                return
            raise imap_failure(e, f"creating folder {name!r} on the new server") from None

    def subscribe(self, name: str) -> None:
        with _failure_named(f"subscribing {name!r} on the new server"):
            self.client.subscribe_folder(name)

    def status(self, name: str) -> tuple[int, int]:
        """UIDVALIDITY and UIDNEXT of a folder."""
        with _failure_named(f"STATUS of {name!r} on the new server"):
            status = self.client.folder_status(name, [b"UIDVALIDITY", b"UIDNEXT"])
        return int(status[b"UIDVALIDITY"]), int(status[b"UIDNEXT"])

    def fingerprints(self, name: str, from_uid: int, batch_bytes: int) -> Iterator[Fingerprint]:
        """Fingerprints of the folder's messages with UID >= `from_uid`, read in bounded batches."""
        with _failure_named(f"reading {name!r} on the new server"):
            self.client.select_folder(name, readonly=True)
            sizes = self.stream.sizes(from_uid)
            batch: list[int] = []
            held = 0
            for uid in sorted(sizes):
                batch.append(uid)
                held += sizes[uid]
                if held >= batch_bytes:
                    yield from self._fingerprint_batch(batch)
                    batch, held = [], 0
            yield from self._fingerprint_batch(batch)
            self.client.unselect_folder()

    def _fingerprint_batch(self, uids: list[int]) -> Iterator[Fingerprint]:
        if not uids:
            return
        bodies = sorted((items.uid or 0, items.body) for items in self.stream.fetch(uids) if items.body is not None)
        for _, raw in bodies:
            yield fingerprint(raw)

    def append(self, name: str, messages: Sequence[FetchedMessage]) -> AppendOutcome:
        """APPEND `messages` in order: one MULTIAPPEND (RFC 3502) when offered, else one by one.

        With LITERAL+ (RFC 7888) the command is written by `ImapStream`, which sends the
        message bytes without copying them; without it imapclient waits for each "+".

        A MULTIAPPEND is all-or-nothing, so when the server refuses it the
        messages are sent again one by one to find and name the refused ones.
        """
        outcome: AppendOutcome | None = None
        if self.stream.literal_plus and (self.multiappend or len(messages) == 1):
            outcome = self._append_literal_plus(name, messages)
        elif self.multiappend and len(messages) > 1:
            outcome = self._multiappend(name, messages)
        if outcome is None:
            outcome = self._append_one_by_one(name, messages)
        return outcome

    def _append_literal_plus(self, name: str, messages: Sequence[FetchedMessage]) -> AppendOutcome | None:
        """One (MULTI)APPEND written by `ImapStream`; None when a batch was refused and must go one by one."""
        status, text = self.stream.append(name, [AppendItem(m.flags, m.internaldate, m.raw) for m in messages])
        if status == "OK":
            return self._all_accepted(name, messages, text)
        if is_transient_response(text):
            raise TransientFailure(f"APPEND to {name!r} on the new server: {one_line(text)}")
        if len(messages) != 1:
            return None
        outcome = AppendOutcome(refused=[(messages[0], f"refused by the new server: {status} {one_line(text)}")])
        outcome.uidvalidity, outcome.uidnext = self.status(name)
        return outcome

    def _multiappend(self, name: str, messages: Sequence[FetchedMessage]) -> AppendOutcome | None:
        """One MULTIAPPEND through imapclient; None when it was refused and the batch must go one by one."""
        try:
            # imapclient returns a refused MULTIAPPEND as ("NO", [text]) instead of raising.
            result = self.client.multiappend(name, [_append_item(m) for m in messages])
        except IMAPClientAbortError:
            raise
        except IMAPClientError as e:
            result = ("NO", [str(e).encode()])
        typ, data = result if isinstance(result, tuple) else ("OK", [result])
        text = b" ".join(d for d in data if isinstance(d, bytes)) if isinstance(data, list) else data
        if typ == "OK":
            return self._all_accepted(name, messages, text)
        if is_transient_response(text):
            raise TransientFailure(f"APPEND to {name!r} on the new server: {one_line(text)}")
        return None

    def _all_accepted(self, name: str, messages: Sequence[FetchedMessage], response: Any) -> AppendOutcome:
        outcome = AppendOutcome(accepted=list(messages))
        self._note_uids(outcome, name, response)
        return outcome

    def _append_one_by_one(self, name: str, messages: Sequence[FetchedMessage]) -> AppendOutcome:
        """One APPEND per message, so that each refusal names its message."""
        outcome = AppendOutcome()
        for message in messages:
            try:
                response = self.client.append(
                    name, message.raw, flags=message.flags, msg_time=message.internaldate
                )
            except IMAPClientAbortError:
                raise
            except IMAPClientError as e:
                if is_transient_response(str(e)):
                    raise TransientFailure(f"APPEND to {name!r} on the new server: {one_line(e)}") from None
                outcome.refused.append((message, f"refused by the new server: {one_line(e)}"))
                continue
            outcome.accepted.append(message)
            self._note_uids(outcome, name, response)
        if not outcome.uidnext:
            outcome.uidvalidity, outcome.uidnext = self.status(name)
        return outcome

    def _note_uids(self, outcome: AppendOutcome, name: str, response: Any) -> None:
        parsed = parse_appenduid(response if isinstance(response, (bytes, str)) else str(response))
        if parsed is not None and parsed[1]:
            outcome.uidvalidity, outcome.uidnext = parsed[0], max(parsed[1]) + 1
        else:
            outcome.uidvalidity, outcome.uidnext = self.status(name)

    def close(self) -> None:
        close_imap(self.client)


def _append_item(message: FetchedMessage) -> dict[str, Any]:
    item: dict[str, Any] = {"msg": message.raw, "flags": message.flags}
    if message.internaldate is not None:
        item["date"] = message.internaldate
    return item
