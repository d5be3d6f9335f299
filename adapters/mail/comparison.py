"""Comparing the old and the new mailbox of one account: per folder counts, content hashes, flags, internal dates,
and, where the copy promised identity, each folder's UIDVALIDITY and UID list."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from mailmigrator.adapters.mail.copier import batches
from mailmigrator.adapters.mail.message_source import FolderListing, MessageSource
from mailmigrator.domain.folders import plan_folders, special_use_names

# Flags the new server may set or drop by itself.
IGNORED_FLAGS = frozenset({"\\recent"})


@dataclass(frozen=True)
class MessageState:
    """What must survive a copy of one message."""

    sha256: str
    flags: frozenset[str]
    internaldate: datetime | None


def folder_states(source: MessageSource, name: str, batch_bytes: int = 4 * 1024 * 1024) -> list[MessageState]:
    """Every message of a folder, read in bounded batches; only hashes are kept."""
    listing = source.open_folder(name)
    out = []
    for group in batches(listing.messages, batch_bytes, 250):
        for message in source.fetch(group):
            flags = frozenset(f for f in message.flags if f.lower() not in IGNORED_FLAGS)
            out.append(MessageState(hashlib.sha256(message.raw).hexdigest(), flags, message.internaldate))
    return out


def _date(value: datetime | None) -> str:
    return value.isoformat() if value is not None else "none"


def compare_folder(
    label: str, old: Sequence[MessageState], new: Sequence[MessageState], *, compare_dates: bool = True
) -> list[str]:
    """Differences between two folders' messages, one line each; [] when equal."""
    lines = []
    if len(old) != len(new):
        lines.append(f"{label}: {len(old)} messages on the old server, {len(new)} on the new")
    old_by_hash: dict[str, list[MessageState]] = defaultdict(list)
    new_by_hash: dict[str, list[MessageState]] = defaultdict(list)
    for message in old:
        old_by_hash[message.sha256].append(message)
    for message in new:
        new_by_hash[message.sha256].append(message)
    old_count = Counter({h: len(v) for h, v in old_by_hash.items()})
    new_count = Counter({h: len(v) for h, v in new_by_hash.items()})
    for digest, n in sorted((old_count - new_count).items()):
        lines.append(f"{label}: message sha256 {digest[:16]} missing on the new server ({n}x)")
    for digest, n in sorted((new_count - old_count).items()):
        extra = "a duplicate" if digest in old_count else "not on the old server"
        lines.append(f"{label}: message sha256 {digest[:16]} {extra} on the new server ({n}x)")
    for digest in sorted(old_by_hash.keys() & new_by_hash.keys()):
        for a, b in zip(
            sorted(old_by_hash[digest], key=lambda m: sorted(m.flags)),
            sorted(new_by_hash[digest], key=lambda m: sorted(m.flags)),
        ):
            if a.flags != b.flags:
                lines.append(
                    f"{label}: message sha256 {digest[:16]} flags differ: old {' '.join(sorted(a.flags)) or '-'}"
                    f", new {' '.join(sorted(b.flags)) or '-'}"
                )
            if compare_dates and a.internaldate is not None and a.internaldate != b.internaldate:
                lines.append(
                    f"{label}: message sha256 {digest[:16]} internal date differs: old {_date(a.internaldate)}"
                    f", new {_date(b.internaldate)}"
                )
    return lines


def compare_identity(label: str, old: FolderListing, new: FolderListing) -> list[str]:
    """Differences in UIDVALIDITY and UIDs between two folders that should be one folder for a mail client."""
    lines = []
    if old.uidvalidity != new.uidvalidity:
        lines.append(f"{label}: UIDVALIDITY {old.uidvalidity} on the old server, {new.uidvalidity} on the new")
    old_uids, new_uids = {m.uid for m in old.messages}, {m.uid for m in new.messages}
    for uids, where in ((old_uids - new_uids, "only on the old server"), (new_uids - old_uids, "only on the new")):
        if uids:
            shown = ", ".join(map(str, sorted(uids)[:10])) + (", ..." if len(uids) > 10 else "")
            lines.append(f"{label}: UID {shown} {where} ({len(uids)})")
    return lines


class MailboxComparison:
    """Old versus new mailbox of one account, folder by folder, as the copier maps them.

    `identity`: the copy kept the old UIDs and UIDVALIDITY (the Dovecot engine), so those are compared too,
    and folders map by name alone as that engine maps them (no special-use renaming).
    """

    def __init__(self, old: MessageSource, new: MessageSource, exclude_folders: Sequence[str] = (),
                 identity: bool = False) -> None:
        self.old = old
        self.new = new
        self.exclude_folders = tuple(exclude_folders)
        self.identity = identity

    def differences(self) -> list[str]:
        """Every difference, one line each; [] when the mailboxes are equal."""
        new_listed = self.new.list_folders()
        plan = plan_folders(
            self.old.list_folders(), self.old.namespace(), self.new.namespace(),
            {} if self.identity else special_use_names(new_listed), self.exclude_folders,
        )
        new_selectable = {f.name for f in new_listed if f.selectable}
        new_subscribed = {f.name for f in new_listed if f.subscribed}
        lines: list[str] = []
        for folder in plan.folders:
            label = f'folder "{folder.source}"' + (
                f' (as "{folder.target}")' if folder.target != folder.source else "")
            if folder.subscribed and folder.target not in new_subscribed:
                lines.append(f"{label}: subscribed on the old server, not on the new")
            if not folder.selectable:
                continue
            if folder.target not in new_selectable:
                lines.append(f"{label}: missing on the new server")
                continue
            if self.identity:
                lines.extend(compare_identity(label, self.old.open_folder(folder.source),
                                              self.new.open_folder(folder.target)))
            lines.extend(compare_folder(label, folder_states(self.old, folder.source),
                                        folder_states(self.new, folder.target)))
        return lines
