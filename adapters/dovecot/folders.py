"""Per-folder reads and the flag delta on both sides once dsync has run (blocking; worker threads).

dsync's one-way `sync -1` leaves a flag set on the old server after the first
pass unchanged on the new side (seen with Dovecot 2.3), so after every pass the
flags of each message (same UID on both sides now) are compared and the new
side's are corrected with UID STORE (RFC 3501 section 6.4.6). With CONDSTORE
on the old server (RFC 7162 section 3.1.4) only messages changed since the
modseq given are read there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from imapclient import IMAPClient

# \Recent belongs to a session (RFC 3501 section 2.3.2); nobody can STORE it.
SESSION_FLAGS = frozenset({b"\\recent"})


@dataclass(frozen=True)
class FolderStatus:
    """One folder's STATUS: UIDVALIDITY, UIDNEXT and message count; zeros when the folder does not exist."""

    uidvalidity: int = 0
    uidnext: int = 0
    messages: int = 0


def folder_status(client: IMAPClient, name: str) -> FolderStatus:
    if not client.folder_exists(name):
        return FolderStatus()
    status = client.folder_status(name, [b"UIDVALIDITY", b"UIDNEXT", b"MESSAGES"])
    return FolderStatus(int(status[b"UIDVALIDITY"]), int(status[b"UIDNEXT"]), int(status[b"MESSAGES"]))


def folder_uids(client: IMAPClient, name: str) -> set[int]:
    """Every UID in the folder; empty when it does not exist."""
    if not client.folder_exists(name):
        return set()
    client.select_folder(name, readonly=True)
    return set(client.search("ALL"))


def sizes_of(client: IMAPClient, name: str, uids: Iterable[int]) -> int:
    """Total RFC822.SIZE of `uids` in the folder."""
    wanted = sorted(uids)
    if not wanted:
        return 0
    client.select_folder(name, readonly=True)
    return sum(int(items.get(b"RFC822.SIZE", 0)) for items in client.fetch(wanted, ["RFC822.SIZE"]).values())


def _flags(client: IMAPClient, changed_since: int = 0) -> dict[int, frozenset[bytes]]:
    uids = client.search("ALL")
    if not uids:
        return {}
    modifiers = [f"CHANGEDSINCE {changed_since}"] if changed_since else None
    fetched = client.fetch(uids, ["FLAGS"], modifiers=modifiers)
    return {uid: frozenset(f for f in items.get(b"FLAGS", ()) if f.lower() not in SESSION_FLAGS)
            for uid, items in fetched.items()}


def copy_flags(source: IMAPClient, target: IMAPClient, source_name: str, target_name: str,
               changed_since: int = 0) -> tuple[int, int]:
    """Make each message's flags on the new side those of the same UID on the old.

    `changed_since`: the old folder's HIGHESTMODSEQ when the flags last agreed (0: compare every message).
    Returns the messages changed and the old folder's HIGHESTMODSEQ read before its flags (0 without CONDSTORE).
    """
    modseq = highest_modseq(source, source_name)
    selected = source.select_folder(source_name, readonly=True)
    if not int(selected.get(b"EXISTS", 0)):
        return 0, modseq
    old = _flags(source, changed_since if modseq and changed_since else 0)
    if not old:
        return 0, modseq
    target.select_folder(target_name)
    new = _flags(target)
    additions: dict[frozenset[bytes], list[int]] = defaultdict(list)
    removals: dict[frozenset[bytes], list[int]] = defaultdict(list)
    for uid, flags in old.items():
        if uid not in new or new[uid] == flags:
            continue
        if flags - new[uid]:
            additions[flags - new[uid]].append(uid)
        if new[uid] - flags:
            removals[new[uid] - flags].append(uid)
    for flags, uids in additions.items():
        target.add_flags(uids, sorted(flags), silent=True)
    for flags, uids in removals.items():
        target.remove_flags(uids, sorted(flags), silent=True)
    return len({uid for group in (*additions.values(), *removals.values()) for uid in group}), modseq


def highest_modseq(client: IMAPClient, name: str) -> int:
    """The folder's HIGHESTMODSEQ (RFC 7162 section 3.1.2.1), 0 without CONDSTORE."""
    if not client.has_capability("CONDSTORE") or not client.folder_exists(name):
        return 0
    status = client.folder_status(name, [b"HIGHESTMODSEQ"])
    return int(status.get(b"HIGHESTMODSEQ", 0))
