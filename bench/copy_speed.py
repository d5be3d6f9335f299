"""Copy benchmark: `mailmigrator migrate` (IMAP and Dovecot engines) against a naive loop and Dovecot's own dsync.

Seeds a deterministic corpus in a private old Dovecot (5,000 messages across 20
folders, 2 KB - 2 MB, ~150 MB; `--small` for a tenth), then copies it three
times, each into its own fresh new Dovecot, and prints wall time, messages/s,
MB/s and the peak RSS of each copier process, and the ratios. Not a test.

    /tmp/venv/bin/python bench/copy_speed.py [--small] [--no-dsync]
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the Dovecot test bed
import testbed

LOGIN = "bench@example.com"
PASSWORD = "bench-password"
FOLDERS = ["INBOX", "Sent", "Drafts", "Trash", "Archive", "Archive/2021", "Archive/2022", "Archive/2023",
           "Entwürfe", "Projekte", "Projekte/Alpha", "Projekte/Alpha/Tief", "Projekte/Beta", "Lists",
           "Lists/dev", "Lists/announce", "Receipts", "Travel", "Family", "Leer"]
FLAG_CHOICES = [(), ("\\Seen",), ("\\Seen", "\\Answered"), ("\\Flagged",), ("\\Seen", "$Forwarded"), ("$Label1",)]


def corpus(count: int, scale: float) -> dict[str, list[testbed.SeedMessage]]:
    rng = random.Random(20240601)
    out: dict[str, list[testbed.SeedMessage]] = {f: [] for f in FOLDERS}
    base = datetime(2015, 1, 1, tzinfo=timezone.utc)
    for i in range(count):
        folder = FOLDERS[rng.randrange(len(FOLDERS) - 1)]  # "Leer" stays empty
        large = rng.random() < 0.02
        size = int((rng.randint(100_000, 2_000_000) if large else rng.randint(2_000, 18_000)) * scale)
        size = max(size, 1_000)
        when = base + timedelta(minutes=rng.randrange(5_000_000))
        message_id: bool | str = True
        if i % 997 == 5:
            message_id = False
        elif i % 911 == 7:
            message_id = "<duplicate@bench.example>"
        raw = testbed.make_message(f"bench-{i}", date=when, message_id=message_id, size=size)
        out[folder].append(testbed.SeedMessage(raw, when, rng.choice(FLAG_CHOICES)))
    return out


def seed(old: testbed.DovecotServer, messages: dict[str, list[testbed.SeedMessage]]) -> tuple[int, int]:
    total = size = 0
    for folder, items in messages.items():
        if folder == "INBOX" or not items:
            with old.imap(LOGIN) as client:
                testbed.create_folder(client, folder)
        if items:
            testbed.seed_bulk(old, LOGIN, folder, items, batch_size=100)
        total += len(items)
        size += sum(len(m.raw) for m in items)
    return total, size


def _peak_rss(pid: int) -> int:
    # VmHWM restarts at exec, unlike ru_maxrss, which a child inherits from this (corpus-holding) parent.
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def measure(command: list[str], stdin: str = "") -> tuple[float, int, int, str]:
    """Wall seconds, peak RSS in bytes (sampled every 20 ms), exit status and output of a child process."""
    started = time.monotonic()
    output = Path(tempfile.mkstemp(prefix="mmbench-out-")[1])
    with output.open("wb") as sink:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.STDOUT)
        assert process.stdin is not None
        process.stdin.write(stdin.encode())
        process.stdin.close()
        peak = 0
        while process.poll() is None:
            peak = max(peak, _peak_rss(process.pid))
            time.sleep(0.02)
    return time.monotonic() - started, peak, process.returncode, output.read_text(errors="replace")


CLI = [sys.executable, "-c", "import sys; from mailmigrator.ops.cli import main; sys.exit(main(sys.argv[1:]))"]


def migrate_with(work: Path, engine: str, old: testbed.DovecotServer, new: testbed.DovecotServer,
                 secret: Path) -> tuple[float, int] | None:
    """`mailmigrator migrate --user` with `engine` into `new`: (wall seconds, peak RSS), then `verify`."""
    config = work / f"mm-{engine}.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{work / f"events-{engine}.sqlite"}"\n'
        f'[source]\nhost = "127.0.0.1:{old.imap_port}"\ntls = "disable"\n'
        f'[target]\nhost = "127.0.0.1"\nport = {new.imap_port}\ntls = "disable"\n'
        f'master_user = "{new.master_user}"\nmaster_password_file = "{secret}"\n'
        f'engine = "{engine}"\ndoveadm_config = "{new.config_path}"\n'
        f'[migration]\nprimary_domain = "example.com"\n'
    )
    wall, rss, code, output = measure([*CLI, "--config", str(config), "migrate", "--user", LOGIN,
                                       "--password-stdin"], PASSWORD + "\n")
    if code != 0:
        print(output)
        return None
    check = subprocess.run([*CLI, "--config", str(config), "verify", LOGIN, "--password-stdin"],
                           input=PASSWORD + "\n", capture_output=True, text=True)
    print(f"verify after the {engine} engine: exit {check.returncode} {check.stdout.strip().splitlines()[-1:]}")
    return wall, rss


def naive_copy(old_port: int, new_port: int, master: str, master_password: str,
               login: str = LOGIN, password: str = PASSWORD) -> None:
    """The baseline: one connection each side, FETCH batches of 100, one APPEND per message."""
    from imapclient import IMAPClient

    src = IMAPClient("127.0.0.1", old_port, ssl=False)
    src.login(login, password)
    src.normalise_times = False
    dst = IMAPClient("127.0.0.1", new_port, ssl=False)
    dst.login(f"{login}*{master}", master_password)
    prefix, sep = src.namespace().personal[0]
    for flags, _, name in src.list_folders():
        if b"\\Noselect" in flags:
            continue
        target = "INBOX" if name == "INBOX" else name[len(prefix):].replace(sep, "/")
        if target != "INBOX":
            try:
                dst.create_folder(target)
            except Exception:  # noqa: BLE001 - already exists
                pass
        src.select_folder(name, readonly=True)
        uids = src.search("ALL")
        for start in range(0, len(uids), 100):
            fetched = src.fetch(uids[start:start + 100], ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
            for uid in sorted(fetched):
                data = fetched[uid]
                flags = [f for f in data[b"FLAGS"] if f != b"\\Recent"]
                dst.append(target, data[b"BODY[]"], flags=flags, msg_time=data[b"INTERNALDATE"])
    src.logout()
    dst.logout()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="500 messages, a tenth of the sizes")
    parser.add_argument("--no-dsync", action="store_true", help="skip the doveadm backup run")
    parser.add_argument("--naive-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_worker:
        old_port, new_port, master, secret_file = args.naive_worker
        naive_copy(int(old_port), int(new_port), master, Path(secret_file).read_text().strip())
        return 0

    count, scale = (500, 0.5) if args.small else (5_000, 1.0)
    work = Path(tempfile.mkdtemp(prefix="mmbench-"))
    old = testbed.make_old_server(work / "old", admin_user="admin").start()
    servers = [old]
    try:
        old.add_user(LOGIN, PASSWORD)
        started = time.monotonic()
        messages = corpus(count, scale)
        total, size = seed(old, messages)
        del messages
        print(f"corpus: {total:,} messages, {size / 1e6:,.1f} MB in {len(FOLDERS)} folders "
              f"(seeded in {time.monotonic() - started:.0f} s)")

        results: dict[str, tuple[float, int]] = {}

        def fresh_target(name: str) -> tuple[testbed.DovecotServer, Path]:
            new = testbed.make_new_server(work / name)
            new.start()
            servers.append(new)
            new.add_user(LOGIN, secrets.token_urlsafe(8))
            secret = work / f"{name}.secret"
            secret.write_text(new.master_password or "")
            secret.chmod(0o600)
            return new, secret

        # mailmigrator, the IMAP engine, then the Dovecot engine (doveadm sync over imapc: old UIDs kept)
        engines = [("imap", "mailmigrator migrate")] + ([] if args.no_dsync else [("dovecot",
                                                                                 "mailmigrator (dovecot engine)")])
        for engine, name in engines:
            new, secret = fresh_target(f"new-mm-{engine}")
            timing = migrate_with(work, engine, old, new, secret)
            if timing is None:
                return 1
            results[name] = timing

        # naive baseline
        new, secret = fresh_target("new-naive")
        wall, rss, code, output = measure([sys.executable, __file__, "--naive-worker", str(old.imap_port),
                                           str(new.imap_port), new.master_user or "", str(secret)])
        if code != 0:
            print(output)
            return 1
        results["naive imapclient loop"] = (wall, rss)

        if not args.no_dsync:
            new, secret = fresh_target("new-dsync")
            command = [
                "doveadm", "-c", str(new.config_path),
                "-o", "imapc_host=127.0.0.1", "-o", f"imapc_port={old.imap_port}",
                "-o", f"imapc_user={LOGIN}", "-o", f"imapc_password={PASSWORD}",
                "-o", "imapc_features=rfc822.size fetch-headers", "-o", "mail_prefetch_count=20",
                "backup", "-R", "-u", LOGIN, "imapc:",
            ]
            wall, rss, code, output = measure(command)
            if code == 0:
                results["doveadm backup -R imapc:"] = (wall, rss)
            else:
                print(f"dsync failed (exit {code}), left out: {output.strip()[:300]}")

        print(f"\n{'copier':28} {'wall s':>8} {'msg/s':>8} {'MB/s':>7} {'peak RSS MB':>12}")
        for name, (wall, rss) in results.items():
            print(f"{name:28} {wall:8.1f} {total / wall:8.0f} {size / 1e6 / wall:7.1f} {rss / 1e6:12.1f}")
        base = results["naive imapclient loop"][0]
        for name, (wall, _) in results.items():
            if name != "naive imapclient loop":
                print(f"{name} vs naive: {base / wall:.2f}x messages/s")
        return 0
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
