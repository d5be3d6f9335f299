"""Memory benchmark: peak RSS of one account's `mailmigrator migrate --user` at several mailbox sizes, against dsync.

For each size a fresh old Dovecot gets a Maildir corpus written directly
(`maildir_corpus`), then `migrate --user` (IMAP engine) and `doveadm backup -R`
over imapc each copy it into a fresh new Dovecot; `verify` must say equal.
Then one account with a single 50 MB message. Prints peak RSS (VmHWM) in MB,
the spread between sizes in % and dsync's RSS as the baseline. Not a test.

    .venv/bin/python bench/copy_memory.py [--sizes 5000,20000,100000] [--big-mb 50] [--no-dsync]
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import maildir_corpus
from copy_speed import CLI, LOGIN, PASSWORD, measure

import testbed

# The size distribution: mostly small messages, a few large ones, so that bytes grow with the count.
SHAPE = maildir_corpus.CorpusShape(small=(2_000, 18_000), large=(100_000, 2_000_000), large_share=0.002)


def run_size(work: Path, count: int, big_mb: int, dsync: bool,
             shape: maildir_corpus.CorpusShape = SHAPE) -> dict[str, tuple[float, float, str]]:
    """(wall s, peak RSS MB, verify verdict) by copier, for a corpus of `count` messages (0: one big message).

    Plain dsync keeps the old server's "INBOX." prefix in folder names, so only mailmigrator's copy is verified.
    """
    old = testbed.make_old_server(work / "old", admin_user="admin").start()
    servers = [old]
    try:
        old.add_user(LOGIN, PASSWORD)
        if count:
            maildir_corpus.write(old, LOGIN, count, shape)
        else:
            maildir_corpus.write(old, LOGIN, 1, maildir_corpus.CorpusShape(
                small=(big_mb * 1_000_000, big_mb * 1_000_000)), folders=["INBOX"])
        out: dict[str, tuple[float, float, str]] = {}
        for copier in ["mailmigrator", *(["dsync"] if dsync else [])]:
            new = testbed.make_new_server(work / f"new-{copier}").start()
            servers.append(new)
            new.add_user(LOGIN, secrets.token_urlsafe(8))
            secret = work / f"{copier}.secret"
            secret.write_text(new.master_password or "")
            secret.chmod(0o600)
            config = work / f"{copier}.toml"
            config.write_text(
                f'[store]\nurl = "sqlite:///{work / f"events-{copier}.sqlite"}"\n'
                f'[source]\nhost = "127.0.0.1:{old.imap_port}"\ntls = "disable"\n'
                f'[target]\nhost = "127.0.0.1"\nport = {new.imap_port}\ntls = "disable"\n'
                f'master_user = "{new.master_user}"\nmaster_password_file = "{secret}"\n'
                f'[migration]\nprimary_domain = "example.com"\n'
            )
            if copier == "mailmigrator":
                command = [*CLI, "--config", str(config), "migrate", "--user", LOGIN, "--password-stdin"]
            else:
                command = ["doveadm", "-c", str(new.config_path), "-o", "imapc_host=127.0.0.1",
                           "-o", f"imapc_port={old.imap_port}", "-o", f"imapc_user={LOGIN}",
                           "-o", f"imapc_password={PASSWORD}", "-o", "imapc_features=rfc822.size fetch-headers",
                           "-o", "mail_prefetch_count=20", "backup", "-R", "-u", LOGIN, "imapc:"]
            wall, rss, code, output = measure(command, PASSWORD + "\n")
            if code != 0:
                raise SystemExit(f"{copier} failed (exit {code}):\n{output[-2000:]}")
            if copier == "dsync":
                out[copier] = (wall, rss / 1e6, "-")
                continue
            check = subprocess.run([*CLI, "--config", str(config), "verify", LOGIN, "--password-stdin"],
                                   input=PASSWORD + "\n", capture_output=True, text=True)
            verdict = "equal" if check.returncode == 0 else f"verify exit {check.returncode}"
            if check.returncode != 0:
                print(f"{copier}: verify said: {check.stdout.strip()[-600:]} {check.stderr.strip()[-300:]}")
            out[copier] = (wall, rss / 1e6, verdict)
        return out
    finally:
        for server in servers:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000,100000", help="comma-separated message counts")
    parser.add_argument("--big-mb", type=int, default=50, help="size of the single big message (0: skip)")
    parser.add_argument("--no-dsync", action="store_true", help="skip the doveadm backup baseline")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes takes comma-separated whole numbers")
    if not sizes or min(sizes) < 1 or args.big_mb < 0:
        parser.error("--sizes must be at least 1 and --big-mb at least 0")

    rows: list[tuple[str, dict[str, tuple[float, float, str]]]] = []
    for count in sizes:
        rows.append((f"{count:,} messages", run_size(Path(tempfile.mkdtemp(prefix="mmmem-")), count, 0, not args.no_dsync)))
        print(f"{rows[-1][0]}: {rows[-1][1]}", flush=True)
    if args.big_mb:
        rows.append((f"one {args.big_mb} MB message",
                     run_size(Path(tempfile.mkdtemp(prefix="mmmem-")), 0, args.big_mb, not args.no_dsync)))

    print(f"\n{'mailbox':22} {'mm wall s':>9} {'mm RSS MB':>10} {'dsync wall s':>12} {'dsync RSS MB':>12}  verify")
    for name, result in rows:
        mm = result["mailmigrator"]
        ds = result.get("dsync", (0.0, 0.0, "-"))
        print(f"{name:22} {mm[0]:9.1f} {mm[1]:10.1f} {ds[0]:12.1f} {ds[1]:12.1f}  {mm[2]}/{ds[2]}")
    peaks = [result["mailmigrator"][1] for _, result in rows[:len(sizes)]]
    print(f"mailmigrator peak RSS over {len(peaks)} sizes: {min(peaks):.1f}-{max(peaks):.1f} MB, "
          f"spread {(max(peaks) - min(peaks)) / min(peaks) * 100:.1f}% (target: at most 64 MB, within 15%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
