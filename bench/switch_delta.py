"""Switch benchmark: how long an old-server switch takes for a large account with changes since its copy.

Seeds 10,000 messages (2-6 KB, five folders) in a private old Dovecot, runs the
first pass of an old-server copy (`while_copying = "old-server"`: the account
ends `copied`), then delivers 100 new messages to the old server, spread over
the folders, and times the switch: `SwitchStarted`, the final delta through the
IMAP engine, `MigrationCompleted`, `SwitchedOver`. The target is under 2 s.
Prints the first pass, the switch's wall time and the `SwitchedOver` figures. Not a test.

    .venv/bin/python bench/switch_delta.py [--messages N] [--changes N]
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the Dovecot test bed
import testbed

from mailmigrator.domain.credentials import Credentials
from mailmigrator.ops.composition import build_migration, open_store
from mailmigrator.ops.config import load_config

LOGIN = "switch@example.com"
PASSWORD = "bench-password"
FOLDERS = ["INBOX", "Sent", "Archive", "Projects", "Lists"]


def messages(prefix: str, count: int, rng: random.Random) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {f: [] for f in FOLDERS}
    for i in range(count):
        out[FOLDERS[i % len(FOLDERS)]].append(testbed.make_message(f"{prefix}-{i}", size=rng.randint(2_000, 6_000)))
    return out


def seed(old: testbed.DovecotServer, batch: dict[str, list[bytes]]) -> None:
    for folder, items in batch.items():
        if folder != "INBOX":
            with old.imap(LOGIN) as client:
                testbed.create_folder(client, folder)
        testbed.seed_bulk(old, LOGIN, folder, items, batch_size=200)


def change_flags_and_expunge(old: testbed.DovecotServer, count: int) -> None:
    """Flag about half of `count` old messages and expunge the rest, spread over the folders."""
    with old.imap(LOGIN) as client:
        for index, folder in enumerate(FOLDERS):
            share = count // len(FOLDERS) + (1 if index < count % len(FOLDERS) else 0)
            client.select_folder(testbed._namespace(client).server_name(folder))
            uids = sorted(client.search("ALL"))[:share]
            client.add_flags(uids[: share // 2], [b"\\Flagged"])
            client.delete_messages(uids[share // 2:])
            client.expunge()


async def run(config_path: Path, old: testbed.DovecotServer, changes: int, edit_old: bool) -> None:
    config = load_config(config_path)
    wired = open_store(config, create=True)
    assert wired is not None
    migration = build_migration(config, wired.app)
    migrate, records = migration.migrate, migration.migrate.records
    credentials = Credentials(LOGIN, PASSWORD)
    await migrate.verify(LOGIN, LOGIN, PASSWORD)
    await migrate.ensure_created(LOGIN, credentials, ())
    await records.copy_mode_chosen(LOGIN, "old-server")
    started = time.monotonic()
    first = await migrate.copier.copy(LOGIN, LOGIN, PASSWORD, LOGIN)
    print(f"first pass: {first.messages:,} messages in {time.monotonic() - started:.1f} s, "
          f"account {(await records.account(LOGIN)).state}")
    if edit_old:
        seed(old, messages("late", changes // 2, random.Random(7)))
        change_flags_and_expunge(old, changes - changes // 2)
    else:
        seed(old, messages("late", changes, random.Random(7)))
    started = time.monotonic()
    outcome = await migrate.run(LOGIN, credentials)
    wall = time.monotonic() - started
    switched = wired.app.history(LOGIN)[-1]
    print(f"switch: {wall:.3f} s wall ({outcome.message}); SwitchedOver {vars(switched).get('duration_seconds', 0):.3f} s, "
          f"{vars(switched).get('delta_messages')} messages in the final delta")
    wired.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--engine", choices=("imap", "dovecot"), default="imap",
                        help="the copy engine; with dovecot, half the changes are flag changes and expunges")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mmswitch-"))
    old = testbed.make_old_server(work / "old").start()
    new = testbed.make_new_server(work / "new")
    new.start()
    try:
        old.add_user(LOGIN, PASSWORD)
        new.add_user(LOGIN, secrets.token_urlsafe(8))
        started = time.monotonic()
        seed(old, messages("bench", args.messages, random.Random(20240601)))
        print(f"corpus: {args.messages:,} messages in {len(FOLDERS)} folders (seeded in "
              f"{time.monotonic() - started:.0f} s); {args.changes} new messages after the first pass")
        secret = work / "master.secret"
        secret.write_text(new.master_password or "")
        secret.chmod(0o600)
        config = work / "mm.toml"
        config.write_text(
            f'[store]\nurl = "sqlite:///{work / "events.sqlite"}"\n'
            f'[source]\nhost = "127.0.0.1:{old.imap_port}"\ntls = "disable"\nlogin_format = "email"\n'
            f'[target]\nhost = "127.0.0.1"\nport = {new.imap_port}\ntls = "disable"\n'
            f'master_user = "{new.master_user}"\nmaster_password_file = "{secret}"\n'
            f'engine = "{args.engine}"\ndoveadm_config = "{new.config_path}"\n'
            f'[migration]\nprimary_domain = "example.com"\nwhile_copying = "old-server"\n'
        )
        trio.run(run, config, old, args.changes, args.engine == "dovecot")
        return 0
    finally:
        old.stop()
        new.stop()


if __name__ == "__main__":
    sys.exit(main())
