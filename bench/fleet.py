"""Fleet benchmark: `migrate --bulk` (concurrency 8) vs the naive serial loop vs `doveadm backup` 8 at a time.

Seeds `--accounts` accounts (default 1,000) of 25 messages (2-6 KB) in a private old
Dovecot, then copies them three times, each into its own fresh new Dovecot: with
`mailmigrator migrate --bulk FILE` (`concurrency = 8`, passwd-file provisioning
creating every account), with the naive baseline of bench/copy_speed.py one account
after another, and with Dovecot's `doveadm backup -R` over imapc run 8 accounts at a
time. Prints accounts/minute for each and the ratios, then `verify` on a sample
of the accounts migrated by mailmigrator. Not a test.

    .venv/bin/python bench/fleet.py [--accounts 1000] [--verify-sample 20] [--copiers mm,naive,dsync]
        [--while-copying old-server|notice|refuse]
        [--profile FILE.txt]

`--profile` runs `migrate --bulk` under py-spy (all threads, collapsed stacks in FILE.txt).
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

from copy_speed import CLI, naive_copy  # the same baseline, from the script beside this one
from login_overhead import PASSWORD, mailbox, verify_all

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the Dovecot test bed
import testbed

CONCURRENCY = 8


def doveadm_backup(old: testbed.DovecotServer, new: testbed.DovecotServer, login: str) -> int:
    return subprocess.run([
        "doveadm", "-c", str(new.config_path),
        "-o", "imapc_host=127.0.0.1", "-o", f"imapc_port={old.imap_port}",
        "-o", f"imapc_user={login}", "-o", f"imapc_password={PASSWORD}",
        "-o", "imapc_features=rfc822.size fetch-headers", "-o", "mail_prefetch_count=20",
        "backup", "-R", "-u", login, "imapc:",
    ], capture_output=True).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--verify-sample", type=int, default=20)
    parser.add_argument("--copiers", default="mm,naive,dsync", help="which of mm, naive, dsync to run")
    parser.add_argument("--while-copying", choices=("old-server", "notice", "refuse"),
                        help="[migration] while_copying (default: the product's)")
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks of migrate --bulk")
    args = parser.parse_args()
    copiers = set(args.copiers.split(","))
    work = Path(tempfile.mkdtemp(prefix="mmfleet-"))
    old = testbed.make_old_server(work / "old").start()
    servers = [old]

    def fresh_target(name: str, users: bool) -> testbed.DovecotServer:
        new = testbed.make_new_server(work / name)
        new.start()
        servers.append(new)
        if users:
            new.add_users({login: secrets.token_urlsafe(8) for login in logins})
        return new

    try:
        logins = [f"fleet{n:05d}@example.com" for n in range(args.accounts)]
        started = time.monotonic()
        old.add_users({login: PASSWORD for login in logins})
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda login: testbed.seed_bulk(old, login, "INBOX", mailbox(login)), logins))
        print(f"corpus: {args.accounts} accounts x 25 messages (seeded in {time.monotonic() - started:.0f} s)")
        walls: dict[str, float] = {}

        bulk_ok, config = True, None
        if "mm" in copiers:
            new = fresh_target("new-mm", users=False)
            secret = work / "master.secret"
            secret.write_text(new.master_password or "")
            secret.chmod(0o600)
            config = work / "mm.toml"
            config.write_text(
                f'[store]\nurl = "sqlite:///{work / "events.sqlite"}"\n'
                f'[source]\nhost = "127.0.0.1:{old.imap_port}"\ntls = "disable"\nlogin_format = "email"\n'
                f'[target]\nhost = "127.0.0.1"\nport = {new.imap_port}\ntls = "disable"\nengine = "imap"\n'
                f'master_user = "{new.master_user}"\nmaster_password_file = "{secret}"\n'
                f'provisioning = "passwd-file"\npasswd_file = "{new.passwd_file}"\n'
                f'[migration]\nprimary_domain = "example.com"\nconcurrency = {CONCURRENCY}\n'
                + (f'while_copying = "{args.while_copying}"\n' if args.while_copying else "")
            )
            accounts_file = work / "accounts.txt"
            accounts_file.write_text("".join(f"{login}:{PASSWORD}\n" for login in logins))
            accounts_file.chmod(0o600)
            profiler = ([str(Path(sys.executable).with_name("py-spy")), "record", "--subprocesses", "--threads",
                         "--nonblocking", "--format", "raw", "-r", "200", "-o", str(args.profile), "--"]
                        if args.profile else [])
            started = time.monotonic()
            bulk = subprocess.run([*profiler, *CLI, "--config", str(config), "migrate", "--bulk", str(accounts_file)],
                                  capture_output=True, text=True)
            walls[f"mailmigrator migrate --bulk (concurrency {CONCURRENCY})"] = time.monotonic() - started
            if bulk.returncode != 0:
                print(f"migrate --bulk exited {bulk.returncode}: {bulk.stdout.strip().splitlines()[-3:]}")
            bulk_ok = bulk.returncode == 0

        if "naive" in copiers:
            naive_new = fresh_target("new-naive", users=True)
            started = time.monotonic()
            for login in logins:
                naive_copy(old.imap_port or 0, naive_new.imap_port or 0, naive_new.master_user or "",
                           naive_new.master_password or "", login, PASSWORD)
            walls["naive imapclient loop, one account after another"] = time.monotonic() - started

        if "dsync" in copiers:
            dsync_new = fresh_target("new-dsync", users=True)
            started = time.monotonic()
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                codes = list(pool.map(lambda login: doveadm_backup(old, dsync_new, login), logins))
            walls[f"doveadm backup -R imapc:, {CONCURRENCY} at a time"] = time.monotonic() - started
            if codes.count(0) != len(codes):
                print(f"doveadm backup failed for {len(codes) - codes.count(0)} accounts")

        print(f"\n{'copier':58} {'wall s':>7} {'acc/min':>8}")
        for name, wall in walls.items():
            print(f"{name:58} {wall:7.1f} {args.accounts / wall * 60:8.0f}")
        ours = next((w for n, w in walls.items() if n.startswith("mailmigrator")), None)
        for name, target in (("naive", "10x"), ("doveadm", "1.5x")):
            other = next((w for n, w in walls.items() if n.startswith(name)), None)
            if ours and other:
                print(f"mailmigrator vs {name}: {other / ours:.2f}x  [target {target}]")
        if config is None:
            return 0
        sample = logins[:: max(1, len(logins) // args.verify_sample)][: args.verify_sample]
        equal = verify_all(config, sample)
        print(f"verify: {equal} of {len(sample)} sampled accounts equal")
        return 0 if equal == len(sample) and bulk_ok else 1
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
