"""Sieve scripts as a migration records them: names, sizes and content hashes, never the scripts themselves."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TypedDict


class ScriptFields(TypedDict):
    """One script in an event: what identifies it, not what it says."""

    name: str
    bytes: int
    sha256: str


class RefusedScriptFields(ScriptFields):
    # The new server's reason (its PUTSCRIPT NO text), or why the script could not be moved.
    reason: str


@dataclass(frozen=True)
class SieveScript:
    """One script as read from a server."""

    name: str
    content: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def fields(self) -> ScriptFields:
        return {"name": self.name, "bytes": len(self.content), "sha256": self.sha256}

    def refused(self, reason: str) -> RefusedScriptFields:
        return {"name": self.name, "bytes": len(self.content), "sha256": self.sha256, "reason": reason}


@dataclass
class FilterReport:
    """What moving one account's scripts did.

    `copied`: accepted by the new server; `refused`: not moved, each with its reason; `old_active`: the script
    active on the old server ("" none); `active`: the one made active on the new server ("" none: it was refused
    or there was none). `not_offered`: why nothing was moved when a server does not offer ManageSieve.
    """

    copied: list[ScriptFields] = field(default_factory=list)
    refused: list[RefusedScriptFields] = field(default_factory=list)
    old_active: str = ""
    active: str = ""
    not_offered: str = ""


def filter_differences(old: list[SieveScript], old_active: str, new: list[SieveScript], new_active: str) -> list[str]:
    """Differences between the old server's scripts and the new one's, one line each, compared by content hash.

    Scripts only the new server has are not differences: the admin may have put them there.
    """
    found = []
    new_by_name = {s.name: s for s in new}
    for script in sorted(old, key=lambda s: s.name):
        other = new_by_name.get(script.name)
        if other is None:
            found.append(f"sieve script {script.name!r}: missing on the new server")
        elif other.sha256 != script.sha256:
            found.append(f"sieve script {script.name!r}: content differs (sha256 {script.sha256[:12]} on the old "
                         f"server, {other.sha256[:12]} on the new)")
    if old_active and old_active in new_by_name and new_active != old_active:
        found.append(f"sieve: {old_active!r} is active on the old server, "
                     f"{repr(new_active) if new_active else 'none'} on the new")
    return found
