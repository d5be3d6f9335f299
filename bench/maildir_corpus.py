"""A benchmark corpus written straight into the old Dovecot's Maildir, then indexed by doveadm: fast at 100,000 messages.

Seeding over IMAP costs minutes at that size; here each message is one file
named the way Dovecot names them (size, virtual size and flags in the name,
INTERNALDATE as the mtime), so indexing reads directory listings only.
Deterministic: the same arguments give the same mailbox.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from imapclient.imap_utf7 import encode as encode_utf7

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the Dovecot test bed
import testbed

FOLDERS = ["INBOX", "Sent", "Drafts", "Trash", "Archive", "Archive/2021", "Archive/2022", "Archive/2023",
           "Entwürfe", "Projekte", "Projekte/Alpha", "Projekte/Alpha/Tief", "Projekte/Beta", "Lists",
           "Lists/dev", "Lists/announce", "Receipts", "Travel", "Family", "Leer"]
# Maildir flag letters: system flags upper case, keywords by their index in dovecot-keywords (a, b, ...).
KEYWORDS = ["$Forwarded", "$Label1"]
FLAG_CHOICES = ["", "S", "RS", "F", "Sa", "b"]
_FILLER = b"".join(b"%076d\r\n" % (i * 7919) for i in range(4096))  # 320 KB of 78-byte lines


@dataclass(frozen=True)
class CorpusShape:
    """Sizes: most messages `small` bytes (a range), a fraction `large_share` of them `large` bytes."""

    small: tuple[int, int] = (2_000, 18_000)
    large: tuple[int, int] = (100_000, 2_000_000)
    large_share: float = 0.02


def message(seed: int, size: int, when: datetime, message_id: str | None) -> bytes:
    """A plain-text message of exactly `size` bytes (at least its headers), CRLF line ends."""
    digest = hashlib.sha256(b"%d" % seed).hexdigest()
    head = (
        f"From: Alice Example <alice@example.com>\r\nTo: bob@example.com\r\n"
        f"Subject: Bench message {seed}\r\nDate: {when.strftime('%a, %d %b %Y %H:%M:%S %z')}\r\n"
        + (f"Message-ID: {message_id}\r\n" if message_id else "")
        + f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{digest}\r\n"
    ).encode()
    missing = size - len(head)
    if missing <= 2:
        return head
    # Whole CRLF lines, then one line of digits: no bare CR or LF, which Dovecot's Maildir would not keep as they are.
    lines, rest = divmod(missing - 2, 78)
    body = bytearray()
    offset = seed % 4096 * 78
    while len(body) < lines * 78:
        body += _FILLER[offset:offset + lines * 78 - len(body)]
        offset = 0
    return head + bytes(body) + b"7" * rest + b"\r\n"


def folder_dir(maildir: Path, folder: str) -> Path:
    """Maildir++ directory of a canonical folder name on the old server (prefix "INBOX.", separator ".")."""
    if folder == "INBOX":
        return maildir
    return maildir / ("." + encode_utf7(folder.replace("/", ".")).decode("ascii"))


def write(old: testbed.DovecotServer, login: str, count: int, shape: CorpusShape = CorpusShape(),
          folders: list[str] | None = None, rng_seed: int = 20240601) -> tuple[int, int]:
    """`count` messages over `folders` (the last stays empty) in `login`'s Maildir; (messages, bytes). Indexed."""
    folders = folders or FOLDERS
    rng = random.Random(rng_seed)
    uid, gid = testbed.ensure_mail_user()
    maildir = old.mail_root / login.lower() / "Maildir"
    dirs = {f: folder_dir(maildir, f) for f in folders}
    for path in dirs.values():
        for sub in ("cur", "new", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        (path / "dovecot-keywords").write_text("".join(f"{i} {k}\n" for i, k in enumerate(KEYWORDS)))
    base = 1_420_070_400  # 2015-01-01
    total = 0
    fillable = folders[:-1] if len(folders) > 1 else folders
    for i in range(count):
        folder = fillable[rng.randrange(len(fillable))]
        low, high = shape.large if rng.random() < shape.large_share else shape.small
        size = rng.randint(low, high)
        stamp = base + rng.randrange(300_000_000)
        message_id = None if i % 997 == 5 else "<duplicate@bench.example>" if i % 911 == 7 else f"<m{i}@bench.example>"
        raw = message(i, size, datetime.fromtimestamp(stamp, timezone.utc), message_id)
        flags = rng.choice(FLAG_CHOICES)
        name = f"{stamp}.M{i}P1.bench,S={len(raw)},W={len(raw)}:2,{''.join(sorted(flags))}"
        path = dirs[folder] / "cur" / name
        path.write_bytes(raw)
        os.utime(path, (stamp, stamp))
        total += len(raw)
    for root, subdirs, files in os.walk(maildir.parent):
        os.chown(root, uid, gid)
        for name in files:
            os.chown(os.path.join(root, name), uid, gid)
    server_names = ["INBOX" if f == "INBOX" else "INBOX." + f.replace("/", ".") for f in folders]
    old.doveadm("mailbox", "subscribe", "-u", login, *server_names)
    old.doveadm("mailbox", "status", "-u", login, "messages vsize", "*")
    return count, total
