"""Pre-copy benchmark: `precopy --all` vs `migrate --bulk` of the same accounts, and the first-login switch.

Seeds `--accounts` accounts (default 200) of `--messages` messages (default 50, 2-6 KB)
and one account of 2,000 messages in a private old Dovecot (admin master user), then
copies the accounts twice, each into its own fresh new Dovecot: `mailmigrator precopy --all`
of a roster (no passwords: the source admin login, passwd-file accounts prepared without a
usable password) and `mailmigrator migrate --bulk FILE` (passwords verified, accounts created),
both at `concurrency = 8`. Then times the full pre-copy of the 2,000-message account and its
first-login switch (`migrate --user`: password verified, set on the new account, final delta
of 20 late messages, switch). Prints walls and ratios. Not a test.

    .venv/bin/python bench/precopy.py [--accounts 200] [--messages 50]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from copy_speed import CLI  # the same command line as the other benchmarks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the Dovecot test bed
import testbed

from mailmigrator.ops.composition import open_store
from mailmigrator.ops.config import load_config

CONCURRENCY = 8
PASSWORD = "bench-password"
BIG = "big@example.com"


def write_config(work: Path, name: str, old: testbed.DovecotServer, new: testbed.DovecotServer) -> Path:
    secrets_dir = work / name
    secrets_dir.mkdir()
    master, admin = secrets_dir / "master.secret", secrets_dir / "admin.secret"
    for path, secret in ((master, new.master_password), (admin, old.master_password)):
        path.write_text(secret or "")
        path.chmod(0o600)
    config = work / f"{name}.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{work / (name + ".sqlite")}"\n'
        f'[source]\nhost = "127.0.0.1:{old.imap_port}"\ntls = "disable"\nlogin_format = "email"\n'
        f'admin_user = "{old.master_user}"\nadmin_password_file = "{admin}"\nadmin_login = "dovecot-master"\n'
        f'[target]\nhost = "127.0.0.1"\nport = {new.imap_port}\ntls = "disable"\nengine = "imap"\n'
        f'master_user = "{new.master_user}"\nmaster_password_file = "{master}"\n'
        f'provisioning = "passwd-file"\npasswd_file = "{new.passwd_file}"\n'
        f'[migration]\nprimary_domain = "example.com"\nconcurrency = {CONCURRENCY}\nwhile_copying = "old-server"\n'
    )
    return config


def roster(config: Path, logins: list[str]) -> None:
    wired = open_store(load_config(config), create=True)
    assert wired is not None
    try:
        wired.app.record_expected(logins, "bench roster")
    finally:
        wired.close()


def timed(*args: str, stdin: str = "") -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, input=stdin)
    if done.returncode != 0:
        print(f"{' '.join(args[2:4])} exited {done.returncode}: {(done.stdout + done.stderr).strip().splitlines()[-3:]}")
    return time.monotonic() - started, done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--messages", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mmprecopy-"))
    old = testbed.make_old_server(work / "old").start()
    servers = [old]
    try:
        logins = [f"pre{n:04d}@example.com" for n in range(args.accounts)]
        rng = random.Random(15)
        started = time.monotonic()
        old.add_users({**{login: PASSWORD for login in logins}, BIG: PASSWORD})
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda login: testbed.seed_bulk(old, login, "INBOX", [
                testbed.make_message(f"{login}-{i}", size=rng.randint(2_000, 6_000)) for i in range(args.messages)
            ]), logins))
        testbed.seed_bulk(old, BIG, "INBOX", [testbed.make_message(f"big-{i}", size=3_000) for i in range(2000)])
        print(f"corpus: {args.accounts} accounts x {args.messages} messages, and {BIG} with 2,000 "
              f"(seeded in {time.monotonic() - started:.0f} s)")

        targets = []
        for name in ("new-precopy", "new-bulk"):
            new = testbed.make_new_server(work / name)
            new.start()
            servers.append(new)
            targets.append(new)
        pre_config = write_config(work, "precopy", old, targets[0])
        bulk_config = write_config(work, "bulk", old, targets[1])
        roster(pre_config, logins)
        pre_wall, _ = timed("--config", str(pre_config), "precopy", "--all")
        accounts_file = work / "accounts.txt"
        accounts_file.write_text("".join(f"{login}:{PASSWORD}\n" for login in logins))
        accounts_file.chmod(0o600)
        bulk_wall, _ = timed("--config", str(bulk_config), "migrate", "--bulk", str(accounts_file))
        print(f"\n{'run':44} {'wall s':>7} {'acc/min':>8}")
        for name, wall in ((f"precopy --all (concurrency {CONCURRENCY})", pre_wall),
                           (f"migrate --bulk (concurrency {CONCURRENCY})", bulk_wall)):
            print(f"{name:44} {wall:7.1f} {args.accounts / wall * 60:8.0f}")
        print(f"precopy --all / migrate --bulk wall: {pre_wall / bulk_wall:.2f}")

        roster(pre_config, [BIG])
        full_wall, _ = timed("--config", str(pre_config), "precopy", BIG)
        testbed.seed_bulk(old, BIG, "INBOX", [testbed.make_message(f"late-{i}", size=3_000) for i in range(20)])
        switch_wall, done = timed("--config", str(pre_config), "migrate", "--user", BIG, "--password-stdin",
                                  stdin=PASSWORD + "\n")
        print(f"\n{BIG}: full pre-copy {full_wall:.2f} s; first-login switch (20 late messages) {switch_wall:.2f} s "
              f"= {switch_wall / full_wall:.2f} of the full copy (both include ~0.4 s CLI start-up)")
        verify_wall, verified = timed("--config", str(pre_config), "verify", BIG)
        print(f"verify {BIG}: exit {verified.returncode}")
        return 0 if done.returncode == 0 and verified.returncode == 0 else 1
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
