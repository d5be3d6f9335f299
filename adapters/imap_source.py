"""Reading the old server over IMAP (blocking; run in a worker thread)."""

from __future__ import annotations

from collections.abc import Sequence

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from mailmigrator.adapters.imap_connection import (
    close_imap,
    fetch_sizes,
    imap_failure,
    listed_folders,
    namespace_of,
    open_imap,
)
from mailmigrator.adapters.mail_connection import LoginPlan, ServerAddress
from mailmigrator.adapters.message_source import FetchedMessage, FolderListing, SourceMessage
from mailmigrator.domain.folders import ListedFolder, Namespace

# \Recent belongs to the session (RFC 3501 section 2.3.2) and cannot be APPENDed.
SESSION_FLAGS = frozenset({"\\recent"})


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class ImapSource:
    """A logged-in IMAP connection to the old server; folders are opened read-only."""

    def __init__(self, address: ServerAddress, plan: LoginPlan) -> None:
        self.address = address
        self.client: IMAPClient = open_imap(address, plan)
        self.selected: str | None = None

    def namespace(self) -> Namespace:
        return namespace_of(self.client)

    def list_folders(self) -> list[ListedFolder]:
        return listed_folders(self.client)

    def open_folder(self, name: str) -> FolderListing:
        try:
            selected = self.client.select_folder(name, readonly=True)
            self.selected = name
            uidvalidity = int(selected[b"UIDVALIDITY"])
            sizes = fetch_sizes(self.client) if int(selected.get(b"EXISTS", 0)) else {}
        except IMAPClientError as e:
            raise imap_failure(e, f"reading folder {name!r} on the old server") from None
        messages = [SourceMessage(uid, size) for uid, size in sorted(sizes.items())]
        return FolderListing(uidvalidity, messages)

    def fetch(self, messages: Sequence[SourceMessage]) -> list[FetchedMessage]:
        if not messages:
            return []
        try:
            fetched = self.client.fetch([m.uid for m in messages], [b"BODY.PEEK[]", b"FLAGS", b"INTERNALDATE"])
        except IMAPClientError as e:
            raise imap_failure(e, f"fetching from {self.selected!r} on the old server") from None
        out = []
        for uid in sorted(fetched):
            data = fetched[uid]
            raw = data.get(b"BODY[]")
            if raw is None:  # expunged meanwhile, or the server sent only flag updates
                continue
            flags = tuple(f for f in (_text(x) for x in data.get(b"FLAGS", ())) if f.lower() not in SESSION_FLAGS)
            out.append(FetchedMessage(uid, raw if isinstance(raw, bytes) else bytes(raw), flags, data.get(b"INTERNALDATE")))
        return out

    def close(self) -> None:
        close_imap(self.client)
