"""The alias map: Postfix virtual format (`alias@domain  account@domain`), rewritten atomically."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path


class AliasMap:
    """One Postfix virtual file; our entries are merged in, other lines are kept as they are."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, account: str, aliases: list[str]) -> None:
        """Map each alias to `account`; an alias already mapped elsewhere is remapped."""
        if not aliases:
            return
        wanted = {a.lower(): account for a in aliases}
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            lines = self.path.read_text().splitlines() if self.path.exists() else []
            kept = [line for line in lines if _alias_of(line) not in wanted]
            kept += [f"{alias}  {target}" for alias, target in sorted(wanted.items())]
            self._replace("".join(line + "\n" for line in kept))

    def entries(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        out = {}
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and not line.lstrip().startswith("#"):
                out[parts[0].lower()] = parts[1]
        return out

    def _replace(self, text: str) -> None:
        mode = self.path.stat().st_mode & 0o777 if self.path.exists() else 0o644
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise


def _alias_of(line: str) -> str | None:
    if line.lstrip().startswith("#"):
        return None
    parts = line.split()
    return parts[0].lower() if parts else None
