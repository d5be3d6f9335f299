"""Large-mailbox benchmark: time and peak RSS of `mailmigrator migrate` on a huge folder and on a huge message.

Seeds a private old Dovecot with two accounts: one with `--messages` small
messages (default 100,000) in its INBOX, one with a single 50 MB message.
Migrates each with `mailmigrator migrate` into a fresh new Dovecot, checks the
result with `mailmigrator verify`, and prints wall time, messages/s, MB/s and
the peak RSS of each migrate process. Memory must stay bounded: neither the
folder nor more than one copy of the big message may be held at once. Not a test.

    /tmp/venv/bin/python bench/large_mailbox.py [--messages N] [--big-mb MB]
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

from copy_speed import measure

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the Dovecot test bed
import testbed

MANY = "many@example.com"
BIG = "big@example.com"
PASSWORD = "large-password"
CLI = [sys.executable, "-c", "import sys; from mailmigrator.ops.cli import main; sys.exit(main(sys.argv[1:]))"]


def small_messages(count: int) -> Iterator[testbed.SeedMessage]:
    base = datetime(2018, 1, 1, tzinfo=timezone.utc)
    for i in range(count):
        when = base + timedelta(minutes=i)
        flags = ("\\Seen",) if i % 3 else ()
        yield testbed.SeedMessage(testbed.make_message(f"many-{i}", date=when, size=1_500), when, flags)


def big_message(size: int) -> bytes:
    """One message of exactly `size` bytes, built in one go (padding a message line by line is quadratic)."""
    raw = testbed.make_message("big", subject="one big message")
    full, rest = divmod(size - len(raw), 78)
    tail = b"y" * (rest - 2) + b"\r\n" if rest >= 2 else b""
    if rest == 1:
        full, tail = full - 1, b"z" * 77 + b"\r\n"
    return raw + (b"x" * 76 + b"\r\n") * full + tail


def config_for(work: Path, old: testbed.DovecotServer, new: testbed.DovecotServer) -> Path:
    secret = work / "master.secret"
    secret.write_text(new.master_password or "")
    secret.chmod(0o600)
    path = work / "mm.toml"
    path.write_text(
        f'[store]\nurl = "sqlite:///{work / "events.sqlite"}"\n'
        f'[source]\nhost = "127.0.0.1:{old.imap_port}"\ntls = "disable"\n'
        f'[target]\nhost = "127.0.0.1"\nport = {new.imap_port}\ntls = "disable"\n'
        f'master_user = "{new.master_user}"\nmaster_password_file = "{secret}"\n'
        f'[migration]\nprimary_domain = "example.com"\n'
    )
    return path


def migrate(config: Path, login: str) -> tuple[float, int, str]:
    """Wall seconds and peak RSS of one migrate, and the verify verdict."""
    wall, rss, code, output = measure([*CLI, "--config", str(config), "migrate", "--user", login,
                                       "--password-stdin"], PASSWORD + "\n")
    if code != 0:
        raise SystemExit(f"migrate {login} failed (exit {code}):\n{output[-3000:]}")
    check = subprocess.run([*CLI, "--config", str(config), "verify", login, "--password-stdin"],
                           input=PASSWORD + "\n", capture_output=True, text=True)
    verdict = (check.stdout.strip().splitlines() or [""])[-1] if check.returncode == 0 else (
        f"verify exit {check.returncode}: {check.stdout.strip()[-300:]}")
    return wall, rss, verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="small messages in the big folder")
    parser.add_argument("--big-mb", type=int, default=50, help="size of the single big message in MB")
    args = parser.parse_args()
    if args.messages < 1 or args.big_mb < 1:
        parser.error("--messages and --big-mb must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="mmlarge-"))
    old = testbed.make_old_server(work / "old").start()
    new = testbed.make_new_server(work / "new").start()
    try:
        old.add_users({MANY: PASSWORD, BIG: PASSWORD})
        new.add_users({MANY: secrets.token_urlsafe(8), BIG: secrets.token_urlsafe(8)})
        old.wait_for_user(MANY)
        old.wait_for_user(BIG)
        started = time.monotonic()
        count = testbed.seed_bulk(old, MANY, "INBOX", small_messages(args.messages), password=PASSWORD,
                                  batch_size=500)
        big_size = args.big_mb * 1_000_000
        big = big_message(big_size)
        assert len(big) == big_size
        testbed.seed_bulk(old, BIG, "INBOX", [big], password=PASSWORD)
        del big
        print(f"seeded {count:,} small messages and one {big_size / 1e6:.0f} MB message "
              f"in {time.monotonic() - started:.0f} s")
        config = config_for(work, old, new)

        rows = []
        wall, rss, verdict = migrate(config, BIG)
        rows.append((f"one {big_size / 1e6:.0f} MB message", 1, big_size, wall, rss, verdict))
        wall, rss, verdict = migrate(config, MANY)
        rows.append((f"{count:,} small messages", count, old_size(old, MANY), wall, rss, verdict))

        print(f"\n{'mailbox':26} {'wall s':>8} {'msg/s':>8} {'MB/s':>7} {'peak RSS MB':>12}  verify")
        for name, messages, size, wall, rss, verdict in rows:
            print(f"{name:26} {wall:8.1f} {messages / wall:8.0f} {size / 1e6 / wall:7.1f} {rss / 1e6:12.1f}  {verdict}")
        return 0
    finally:
        new.stop()
        old.stop()


def old_size(old: testbed.DovecotServer, login: str) -> int:
    with old.imap(login, PASSWORD) as client:
        return int(client.folder_status("INBOX", [b"SIZE"])[b"SIZE"])


if __name__ == "__main__":
    sys.exit(main())
