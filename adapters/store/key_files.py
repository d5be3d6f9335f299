"""AES key files: 32 random bytes, base64, mode 0600, whole on disk before their name appears."""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path


def write_key_file(path: Path) -> None:
    """Write a new random AES-256 key to `path`; `FileExistsError` when a key is already there.

    Written aside and fsynced, then linked into place, then the directory fsynced:
    a node starting at the same moment, or a reader after a crash, finds either no
    key or a whole one, never an empty or half-written file.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.link(tmp, path)
        _fsync_directory(path.parent)
    finally:
        os.unlink(tmp)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
