"""The transport map: a Postfix transport(5) file routing the mail of accounts not yet switched over to the old server.

mailmigrator owns the whole file and rewrites it from its account projection: one line
`login  smtp:<old_smtp>` per account whose mail the old server still takes; a switched
account's line is gone, so Postfix delivers its mail locally. Entries of your own belong in
another map (`transport_maps = hash:/etc/postfix/transport, hash:<this file>`).

The first line records the event position the file was generated from. Several processes
(`serve` nodes, CLI commands) rewrite it; under the file's lock a process never replaces a
file generated from a later position with its own older view.
"""

from __future__ import annotations

import fcntl
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from mailmigrator.adapters.accounts.map_file import read_map_text, replace_map_text
from mailmigrator.domain.errors import ExplainedError

POSTMAP_TIMEOUT = 120.0
_HEADER = "# mailmigrator transport map, generated from event position {position}; edits here are overwritten\n"
_POSITION = re.compile(r"# mailmigrator transport map, generated from event position (\d+);")


class TransportMapError(ExplainedError):
    """The map or its postmap(1) database could not be written; the message is one line."""


class TransportMap:
    """One Postfix transport file; `next_hop` is what follows `smtp:` (e.g. `[old.example.com]:25`)."""

    def __init__(self, path: Path, next_hop: str, postmap: str | None = None) -> None:
        self.path = path
        self.next_hop = next_hop
        self.postmap = postmap
        self._database_current = False

    def rewrite(self, logins: Sequence[str], position: int, *, force: bool = False) -> bool:
        """Make the file hold exactly `logins` as of event `position`; returns whether it was written.

        A file from a later position is kept unless `force` (a replay). postmap runs after
        every write, and once per process even when the text was already right.
        """
        text = _HEADER.format(position=position) + "".join(f"{login}  smtp:{self.next_hop}\n" for login in logins)
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            with open(lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = read_map_text(self.path)
                written = _position(current)
                if not force and written is not None and written > position:
                    return False
                changed = _body(current) != _body(text)
                if changed or written is None:
                    replace_map_text(self.path, text)
                if self.postmap and (changed or not self._database_current):
                    self._run_postmap()
                return changed
        except OSError as e:
            raise TransportMapError(f"[target] transport_map {self.path}: {e.strerror or e}") from None

    def routed(self) -> dict[str, str]:
        """Every login in the file and its transport, as postmap(1) reads the lines."""
        out: dict[str, str] = {}
        for line in read_map_text(self.path).split("\n"):
            fields = line.split()
            if len(fields) == 2 and not fields[0].startswith("#"):
                out[fields[0]] = fields[1]
        return out

    def _run_postmap(self) -> None:
        assert self.postmap is not None
        try:
            done = subprocess.run([self.postmap, str(self.path)], stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, errors="replace", timeout=POSTMAP_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as e:
            self._database_current = False
            raise TransportMapError(f"[target] postmap {self.postmap} could not be run: "
                                    f"{getattr(e, 'strerror', None) or type(e).__name__}") from None
        self._database_current = done.returncode == 0
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:200]
            raise TransportMapError(f"[target] postmap {self.postmap} {self.path} failed: {reason}")


def _position(text: str) -> int | None:
    match = _POSITION.match(text)
    return int(match.group(1)) if match else None


def _body(text: str) -> str:
    return text.partition("\n")[2] if _POSITION.match(text) else text
