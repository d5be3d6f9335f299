"""Replacing a Postfix map file whole: a reader (postmap, Postfix itself) sees the old text or the new, never half."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def read_map_text(path: Path) -> str:
    """The file's text, bytes it cannot decode kept as they are (surrogateescape); "" when it does not exist."""
    if not path.exists():
        return ""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        return f.read()


def replace_map_text(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, keep the old mode, rename it over `path`."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
