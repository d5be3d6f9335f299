"""Reading the old server over IMAP (blocking; run in a worker thread)."""

from __future__ import annotations

from collections.abc import Sequence

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from mailmigrator.adapters.imap.connection import (
    close_imap,
    imap_failure,
    listed_folders,
    namespace_of,
    open_imap,
)
from mailmigrator.adapters.imap.stream import ImapStream
from mailmigrator.adapters.imap.wire import WireSyntaxError, parse_internaldate
from mailmigrator.adapters.mail.connection import LoginPlan, MailConnectionError, ServerAddress
from mailmigrator.adapters.mail.message_source import FetchedMessage, FolderListing, SourceMessage
from mailmigrator.domain.folders import ListedFolder, Namespace

# \Recent belongs to the session (RFC 3501 section 2.3.2) and cannot be APPENDed.
SESSION_FLAGS = frozenset({"\\recent"})


class ImapSource:
    """A logged-in IMAP connection to the old server; folders are opened read-only."""

    def __init__(self, address: ServerAddress, plan: LoginPlan) -> None:
        self.address = address
        self.client: IMAPClient = open_imap(address, plan)
        self.stream = ImapStream(self.client)
        self.selected: str | None = None
        self.status_size = self.client.has_capability("STATUS=SIZE")

    def namespace(self) -> Namespace:
        return namespace_of(self.client)

    def list_folders(self) -> list[ListedFolder]:
        return listed_folders(self.client)

    def open_folder(self, name: str) -> FolderListing:
        try:
            selected = self.client.select_folder(name, readonly=True)
            self.selected = name
            uidvalidity = int(selected[b"UIDVALIDITY"])
            sizes = self.stream.sizes() if int(selected.get(b"EXISTS", 0)) else {}
        except IMAPClientError as e:
            raise imap_failure(e, f"reading folder {name!r} on the old server") from None
        messages = [SourceMessage(uid, sizes[uid]) for uid in sorted(sizes)]
        return FolderListing(uidvalidity, messages)

    def folder_totals(self, name: str) -> tuple[int, int] | None:
        """Messages and bytes from one STATUS (RFC 8438 SIZE), or None when the server lacks STATUS=SIZE."""
        if not self.status_size:
            return None
        try:
            status = self.client.folder_status(name, [b"MESSAGES", b"SIZE"])
        except IMAPClientError as e:
            raise imap_failure(e, f"STATUS of {name!r} on the old server") from None
        return int(status[b"MESSAGES"]), int(status[b"SIZE"])

    def fetch(self, messages: Sequence[SourceMessage]) -> list[FetchedMessage]:
        if not messages:
            return []
        out = []
        try:
            for items in self.stream.fetch([m.uid for m in messages]):
                if items.body is None or items.uid is None:  # expunged meanwhile, or only a flags update
                    continue
                flags = tuple(f for f in items.flags or () if f.lower() not in SESSION_FLAGS)
                when = parse_internaldate(items.internaldate) if items.internaldate else None
                out.append(FetchedMessage(items.uid, items.body, flags, when))
        except IMAPClientError as e:
            raise imap_failure(e, f"fetching from {self.selected!r} on the old server") from None
        except WireSyntaxError as e:
            raise MailConnectionError(f"fetching from {self.selected!r} on the old server: {e}") from None
        out.sort(key=lambda m: m.uid)
        return out

    def close(self) -> None:
        close_imap(self.client)
