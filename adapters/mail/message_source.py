"""The narrow interface every old-server reader offers the copier (IMAP or POP3)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from mailmigrator.domain.folders import ListedFolder, Namespace


# Slots: a listing holds one of these per message of the folder, so each is kept small.
@dataclass(frozen=True, slots=True)
class SourceMessage:
    """A message as listed before fetching: IMAP UID (POP3: message number), size, POP3 UIDL."""

    uid: int
    size: int
    uidl: str = ""


@dataclass(frozen=True)
class FolderListing:
    """A folder's messages in UID order. `uidvalidity` is 0 for POP3, whose checkpoint is the UIDL."""

    uidvalidity: int
    messages: list[SourceMessage]
    by_uidl: bool = False


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    """One message's exact bytes, flags and INTERNALDATE (None: let the target choose)."""

    uid: int
    raw: bytes
    flags: tuple[str, ...]
    internaldate: datetime | None
    uidl: str = ""


class MessageSource(Protocol):
    """A logged-in connection to the old server. Blocking: run it in a worker thread."""

    def namespace(self) -> Namespace: ...

    def list_folders(self) -> list[ListedFolder]: ...

    def open_folder(self, name: str) -> FolderListing: ...

    def fetch(self, messages: Sequence[SourceMessage]) -> list[FetchedMessage]: ...

    def close(self) -> None: ...


@runtime_checkable
class FolderTotals(Protocol):
    """A source that can count a folder's messages and bytes without listing them (IMAP STATUS=SIZE)."""

    def folder_totals(self, name: str) -> tuple[int, int] | None:
        """Messages and bytes in the folder, or None when the server cannot say cheaply."""
        ...
