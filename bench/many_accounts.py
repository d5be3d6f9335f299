"""Many-accounts benchmark: `migrate --bulk` (concurrency 8) vs the naive loop, account after account.

Seeds a private old Dovecot with `--accounts` accounts (default 200) of `--messages`
messages each (default 50, 2-6 KB), then copies them twice, each into its own fresh
new Dovecot: with `mailmigrator migrate --bulk FILE` (`[migration] concurrency = 8`),
and with the naive baseline of bench/copy_speed.py (one imapclient connection each
side, FETCH batches of 100, one APPEND per message) one account after another.
Prints wall time, accounts per minute, messages per second and the ratio, and checks
that both new servers hold every message. Not a test.

When `migrate --bulk` is not available (exit status 2 from argparse, or an error
before any account was copied), it falls back to `migrate --user` per account under a
concurrency of 8 and says so.

    /tmp/venv/bin/python bench/many_accounts.py [--accounts 200] [--messages 50]
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from copy_speed import naive_copy  # the same baseline, from the script beside this one
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the Dovecot test bed
import testbed

CONCURRENCY = 8
CLI = [sys.executable, "-c", "import sys; from mailmigrator.ops.cli import main; sys.exit(main(sys.argv[1:]))"]


def naive_copy_accounts(old_port: int, new_port: int, master: str, master_password: str,
                        accounts: list[tuple[str, str]]) -> None:
    """The baseline of bench/copy_speed.py, per account in turn."""
    for login, password in accounts:
        naive_copy(old_port, new_port, master, master_password, login, password)


def messages_on(server: testbed.DovecotServer, logins: list[str]) -> int:
    def one(login: str) -> int:
        with server.imap(login) as client:
            return sum(client.folder_status(name, [b"MESSAGES"])[b"MESSAGES"]
                       for flags, _, name in client.list_folders()
                       if b"\\Noselect" not in flags and b"\\NonExistent" not in flags)

    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(one, logins))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--naive-worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_worker:
        old_port, new_port, master, secret_file, accounts_file = args.naive_worker
        accounts = [tuple(line.split(":", 1)) for line in Path(accounts_file).read_text().splitlines() if line]
        naive_copy_accounts(int(old_port), int(new_port), master, Path(secret_file).read_text().strip(),
                            accounts)  # type: ignore[arg-type]
        return 0

    work = Path(tempfile.mkdtemp(prefix="mmbench-many-"))
    old = testbed.make_old_server(work / "old").start()
    servers = [old]
    try:
        accounts = [(f"many{n}@example.com", secrets.token_urlsafe(10)) for n in range(args.accounts)]
        logins = [login for login, _ in accounts]
        started = time.monotonic()
        old.add_users(dict(accounts))

        def seed(n: int) -> None:
            login = logins[n]
            items = [testbed.make_message(f"{login}-{i}", body="x" * (2000 + (i * 97) % 4000))
                     for i in range(args.messages)]
            testbed.seed_bulk(old, login, "INBOX", items, batch_size=100)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(seed, range(len(logins))))
        total = args.accounts * args.messages
        print(f"corpus: {args.accounts} accounts x {args.messages} messages = {total:,} "
              f"(seeded in {time.monotonic() - started:.0f} s)")
        accounts_file = work / "accounts.txt"
        accounts_file.write_text("".join(f"{login}:{password}\n" for login, password in accounts))
        accounts_file.chmod(0o600)

        def fresh_target(name: str) -> tuple[testbed.DovecotServer, Path]:
            new = testbed.make_new_server(work / name)
            new.start()
            servers.append(new)
            new.add_users({login: secrets.token_urlsafe(8) for login in logins})
            secret = work / f"{name}.secret"
            secret.write_text(new.master_password or "")
            secret.chmod(0o600)
            return new, secret

        def mm_config(new: testbed.DovecotServer, secret: Path) -> Path:
            path = work / "mm.toml"
            path.write_text(
                f'[store]\nurl = "sqlite:///{work / f"events-{new.workdir.name}.sqlite"}"\n'
                f'[source]\nhost = "127.0.0.1:{old.imap_port}"\ntls = "disable"\nlogin_format = "email"\n'
                f'[target]\nhost = "127.0.0.1"\nport = {new.imap_port}\ntls = "disable"\n'
                f'master_user = "{new.master_user}"\nmaster_password_file = "{secret}"\n'
                f'provisioning = "passwd-file"\npasswd_file = "{new.passwd_file}"\n'
                f'[migration]\nprimary_domain = "example.com"\nconcurrency = {CONCURRENCY}\n'
            )
            return path

        # mailmigrator migrate --bulk
        new_mm, secret = fresh_target("new-mm")
        config = mm_config(new_mm, secret)
        started = time.monotonic()
        bulk = subprocess.run([*CLI, "--config", str(config), "migrate", "--bulk", str(accounts_file)],
                              capture_output=True, text=True)
        mm_wall = time.monotonic() - started
        mm_how = "migrate --bulk"
        mm_copied = messages_on(new_mm, logins)
        if bulk.returncode != 0 and mm_copied == 0:
            print(f"migrate --bulk unavailable (exit {bulk.returncode}: "
                  f"{(bulk.stderr.strip().splitlines() or [''])[-1][:200]}); "
                  f"falling back to migrate --user per account, {CONCURRENCY} at a time")
            new_mm, secret = fresh_target("new-mm-per-user")
            config = mm_config(new_mm, secret)

            def one(entry: tuple[str, str]) -> int:
                return subprocess.run([*CLI, "--config", str(config), "migrate", "--user", entry[0],
                                       "--password-stdin"], input=entry[1] + "\n", capture_output=True).returncode

            started = time.monotonic()
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                codes = list(pool.map(one, accounts))
            mm_wall = time.monotonic() - started
            mm_how = f"migrate --user x{args.accounts}, {CONCURRENCY} at a time (fallback)"
            mm_copied = messages_on(new_mm, logins)
            print(f"per-user runs: {codes.count(0)} of {len(codes)} exited 0")
        elif bulk.returncode != 0:
            print(f"migrate --bulk exited {bulk.returncode}: {bulk.stdout.strip().splitlines()[-3:]}")

        # naive baseline, account after account
        new_naive, secret = fresh_target("new-naive")
        started = time.monotonic()
        subprocess.run([sys.executable, __file__, "--naive-worker", str(old.imap_port), str(new_naive.imap_port),
                        new_naive.master_user or "", str(secret), str(accounts_file)], check=True)
        naive_wall = time.monotonic() - started
        naive_copied = messages_on(new_naive, logins)

        print(f"\n{'copier':58} {'wall s':>7} {'acc/min':>8} {'msg/s':>7} {'copied':>8}")
        for name, wall, copied in ((f"mailmigrator {mm_how}", mm_wall, mm_copied),
                                   ("naive imapclient loop, one account after another", naive_wall, naive_copied)):
            print(f"{name:58} {wall:7.1f} {args.accounts / wall * 60:8.0f} {total / wall:7.0f} {copied:8,}")
        print(f"mailmigrator vs naive: {naive_wall / mm_wall:.2f}x accounts per minute"
              f"{'' if mm_copied == naive_copied == total else '  (COPIED COUNTS DIFFER: see above)'}")
        return 0
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
