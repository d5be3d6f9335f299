"""Where the copy of one folder stands: the checkpoint a resume or a finish sweep starts from.

Each `FolderCopied` carries what was copied since the previous checkpoint of the
folder; the checkpoint after it adds those counts up, unless the source folder's
UIDVALIDITY changed, when its UIDs mean other messages and the count starts over.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, replace
from typing import NotRequired, TypedDict


class SkippedMessage(TypedDict):
    """A message not copied, and why (too large, refused by the new server)."""

    uid: int
    size: NotRequired[int]
    reason: str


class FolderCopiedFields(TypedDict):
    """The payload of one `FolderCopied`: the counts are those since the previous checkpoint."""

    source_folder: str
    target_folder: str
    uidvalidity: int
    highest_uid: int
    messages: int
    bytes: int
    skipped: list[SkippedMessage]
    done: bool
    target_uidvalidity: NotRequired[int]
    target_uidnext: NotRequired[int]
    last_uidl: NotRequired[str]
    node: NotRequired[str]
    highest_modseq: NotRequired[int]


class CheckpointFields(TypedDict, total=False):
    """A `FolderCheckpoint` as stored in `FinishSwept.checkpoints`.

    Sweeps recorded before `skipped` was stored lack that key; `from_dict` defaults any missing one.
    """

    target: str
    uidvalidity: int
    highest_uid: int
    messages: int
    bytes: int
    skipped: int
    done: bool
    target_uidvalidity: int
    target_uidnext: int
    last_uidl: str
    highest_modseq: int


@dataclass(frozen=True)
class FolderCheckpoint:
    """One source folder's copy: how far it went, what it copied in total, where the target stood.

    `highest_uid` is the last source UID copied (IMAP), `last_uidl` the last
    POP3 unique id; `target_uidvalidity` and `target_uidnext` say where the
    target folder stood, so a resume fingerprints only target messages from there on.
    `highest_modseq` is the source folder's HIGHESTMODSEQ (RFC 7162) when the target's flags last matched
    it (the Dovecot engine; 0: unknown), so the next flag comparison reads only messages changed since.
    """

    target: str
    uidvalidity: int
    highest_uid: int = 0
    messages: int = 0
    bytes: int = 0
    skipped: int = 0
    done: bool = False
    target_uidvalidity: int = 0
    target_uidnext: int = 0
    last_uidl: str = ""
    highest_modseq: int = 0

    @classmethod
    def of_copied(cls, copied: FolderCopiedFields) -> FolderCheckpoint:
        """The checkpoint one `FolderCopied` records, its counts alone."""
        return cls(
            target=copied["target_folder"],
            uidvalidity=copied["uidvalidity"],
            highest_uid=copied["highest_uid"],
            messages=copied["messages"],
            bytes=copied["bytes"],
            skipped=len(copied["skipped"]),
            done=copied["done"],
            target_uidvalidity=copied.get("target_uidvalidity", 0),
            target_uidnext=copied.get("target_uidnext", 0),
            last_uidl=copied.get("last_uidl", ""),
            highest_modseq=copied.get("highest_modseq", 0),
        )

    def then(self, later: FolderCheckpoint) -> FolderCheckpoint:
        """The checkpoint after `later`, whose counts are those since this one.

        The same UIDVALIDITY adds the counts up; another one means the folder
        was recreated on the source, and `later` starts over.
        """
        if later.uidvalidity != self.uidvalidity:
            return later
        return replace(
            later,
            messages=self.messages + later.messages,
            bytes=self.bytes + later.bytes,
            skipped=self.skipped + later.skipped,
        )

    def to_dict(self) -> CheckpointFields:
        return {
            "target": self.target,
            "uidvalidity": self.uidvalidity,
            "highest_uid": self.highest_uid,
            "messages": self.messages,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "done": self.done,
            "target_uidvalidity": self.target_uidvalidity,
            "target_uidnext": self.target_uidnext,
            "last_uidl": self.last_uidl,
            "highest_modseq": self.highest_modseq,
        }

    @classmethod
    def from_dict(cls, fields: CheckpointFields) -> FolderCheckpoint:
        """Read a stored checkpoint; a key an older event lacks takes its default."""
        return cls(
            target=fields.get("target", ""),
            uidvalidity=fields.get("uidvalidity", 0),
            highest_uid=fields.get("highest_uid", 0),
            messages=fields.get("messages", 0),
            bytes=fields.get("bytes", 0),
            skipped=fields.get("skipped", 0),
            done=fields.get("done", False),
            target_uidvalidity=fields.get("target_uidvalidity", 0),
            target_uidnext=fields.get("target_uidnext", 0),
            last_uidl=fields.get("last_uidl", ""),
            highest_modseq=fields.get("highest_modseq", 0),
        )


def advance(
    checkpoints: MutableMapping[str, FolderCheckpoint], source_folder: str, later: FolderCheckpoint
) -> FolderCheckpoint:
    """Put the checkpoint after `later` in place of the folder's previous one (if any) and return it."""
    previous = checkpoints.get(source_folder)
    merged = later if previous is None else previous.then(later)
    checkpoints[source_folder] = merged
    return merged

