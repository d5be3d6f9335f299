"""The alias map: Postfix virtual format (`alias@domain  account@domain`), rewritten atomically.

Lines are split on `\\n` only, as postmap(1) reads them: `str.splitlines()` would also split on
`\\x1c`, `\\x85` or `\\u2028` and turn one line into two. The bytes are kept as they are
(surrogateescape), so a line this code does not understand survives every rewrite.
"""

from __future__ import annotations

import fcntl
import re
from pathlib import Path

from mailmigrator.adapters.accounts.map_file import read_map_text, replace_map_text

_BLANKS = re.compile(r"[ \t]+")


class AliasMap:
    """One Postfix virtual file; our entries are appended, existing lines are never changed or removed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, account: str, aliases: list[str]) -> dict[str, str]:
        """Map each alias not yet in the file to `account`; returns the ones already mapped elsewhere, and to whom.

        An alias already mapped to `account` is left as it is.
        """
        if not aliases:
            return {}
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            text = self._read()
            current = _entries(text)
            refused = {a: current[a] for a in aliases if a in current and current[a].lower() != account}
            added = sorted({a for a in aliases if a not in current})
            if added:
                if text and not text.endswith("\n"):
                    text += "\n"
                self._replace(text + "".join(f"{alias}  {account}\n" for alias in added))
            return refused

    def entries(self) -> dict[str, str]:
        """Every mapped key (lower-cased) and its first target."""
        return _entries(self._read())

    def _read(self) -> str:
        return read_map_text(self.path)

    def _replace(self, text: str) -> None:
        replace_map_text(self.path, text)


def _entries(text: str) -> dict[str, str]:
    # postmap(1): a line starting with whitespace continues the previous one; `#` starts a comment;
    # fields are separated by ASCII blanks only (str.split() would also split on \x1c or \x85).
    out: dict[str, str] = {}
    for line in text.split("\n"):
        fields = _BLANKS.split(line.rstrip("\r"))
        if not fields[0] or fields[0].startswith("#"):
            continue
        target = fields[1].rstrip(",") if len(fields) > 1 else ""
        out.setdefault(fields[0].lower(), target)
    return out
