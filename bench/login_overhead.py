"""Per-account overhead benchmark: users log in through `serve` at once; how long until their mail has moved.

Seeds USERS accounts of 25 messages (2-6 KB) in a private old Dovecot, runs `serve`
in this process (`concurrency = 4`, passwd-file provisioning, the default
`while_copying`) against a fresh new Dovecot, and lets every user log in through
the proxy at the same moment (IMAP LOGIN, SELECT INBOX, LOGOUT). For each account
it takes the time from `PasswordVerified` to its last `MigrationCompleted` (both
recorded timestamps) and divides it by the baseline measured in the same run: the
naive imapclient loop of bench/copy_speed.py copying one such mailbox (median of
three accounts, into a new Dovecot of their own). Ends with `verify` of every
account (exit 0 = equal). Not a test.

    .venv/bin/python bench/login_overhead.py [--users 12] [--engine imap|dovecot] [--profile FILE.html]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trio

from copy_speed import CLI, naive_copy  # the same baseline, from the script beside this one
from cutover_morning import login_once, wait_switched, write_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the Dovecot test bed
import testbed

from mailmigrator.adapters.proxy.listeners import ProxyLimits
from mailmigrator.adapters.proxy.throttle import LoginThrottle
from mailmigrator.domain.application import MigrationService
from mailmigrator.ops.composition import open_store
from mailmigrator.ops.config import Endpoint, load_config
from mailmigrator.ops.serve import build_service

PASSWORD = "morning-password"
MESSAGES = 25
CONCURRENCY = 4
NAIVE_SAMPLES = 3


def mailbox(login: str) -> list[bytes]:
    return [testbed.make_message(f"{login}-{i}", body="x" * (2000 + (i * 97) % 4000)) for i in range(MESSAGES)]


def naive_baseline(work: Path, old: testbed.DovecotServer, logins: list[str]) -> float:
    """Median seconds the naive loop takes for one mailbox, each into a fresh account of its own new Dovecot."""
    new = testbed.make_new_server(work / "new-naive")
    new.start()
    try:
        new.add_users({login: "unused-password" for login in logins})
        walls = []
        for login in logins:
            started = time.monotonic()
            naive_copy(old.imap_port or 0, new.imap_port or 0, new.master_user or "", new.master_password or "",
                       login, PASSWORD)
            walls.append(time.monotonic() - started)
        return statistics.median(walls)
    finally:
        new.stop()


async def log_in_at_once(config_path: Path, users: list[str]) -> MigrationService:
    config = load_config(config_path)
    config = config.model_copy(update={"proxy": config.proxy.model_copy(update={"imap": (Endpoint("127.0.0.1", 0),)})})
    store = open_store(config, create=True)
    assert store is not None
    store.app.start_run("bench")
    service = build_service(config, store.app, ProxyLimits(failure_delay=0.0),
                            LoginThrottle(max_per_login=100, max_per_address=100_000,
                                          max_in_flight_per_address=len(users)))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(service.run)
        port = bound[0][1]
        async with trio.open_nursery() as logins:
            for login in users:
                logins.start_soon(trio.to_thread.run_sync, login_once, port, login)
        await wait_switched(store.app, users)
        nursery.cancel_scope.cancel()
    return store.app


def overheads(app: MigrationService, users: list[str]) -> dict[str, float]:
    """Seconds from `PasswordVerified` to the last `MigrationCompleted`, per account."""
    out = {}
    for login in users:
        events = list(app.history(login))
        verified = next(e.timestamp for e in events if type(e).__name__ == "PasswordVerified")
        completed = [e.timestamp for e in events if type(e).__name__ == "MigrationCompleted"][-1]
        out[login] = (completed - verified).total_seconds()
    return out


def print_timeline(app: MigrationService, login: str) -> None:
    """Each recorded event of `login`, in ms after its first."""
    events = list(app.history(login))
    print(f"events of {login}, ms after the first:")
    for event in events:
        print(f"  {(event.timestamp - events[0].timestamp).total_seconds() * 1000:7.0f}  {type(event).__name__}")


def verify_all(config_path: Path, users: list[str]) -> int:
    """How many accounts `mailmigrator verify` finds equal (exit 0)."""
    def one(login: str) -> int:
        return subprocess.run([*CLI, "--config", str(config_path), "verify", login, "--password-stdin"],
                              input=PASSWORD + "\n", capture_output=True, text=True).returncode

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, users)).count(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=12)
    parser.add_argument("--engine", choices=("imap", "dovecot"), default="imap")
    parser.add_argument("--timeline", action="store_true", help="print the slowest account's events, in ms")
    parser.add_argument("--profile", type=Path, help="write a pyinstrument profile of the logins (HTML)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mmoverhead-"))
    old = testbed.make_old_server(work / "old").start()
    new = testbed.make_new_server(work / "new")
    new.start()
    try:
        users = [f"user{i:03d}@example.com" for i in range(args.users)]
        naive_users = [f"naive{i}@example.com" for i in range(NAIVE_SAMPLES)]
        old.add_users({login: PASSWORD for login in users + naive_users})
        for login in users + naive_users:
            testbed.seed_bulk(old, login, "INBOX", mailbox(login))
        baseline = naive_baseline(work, old, naive_users)
        config_path = write_config(work, old, new, args.engine, concurrency=CONCURRENCY)
        profiler = None
        if args.profile:
            from pyinstrument import Profiler
            profiler = Profiler(async_mode="disabled")
            profiler.start()
        started = time.monotonic()
        app = trio.run(log_in_at_once, config_path, users)
        wall = time.monotonic() - started
        if profiler is not None:
            profiler.stop()
            args.profile.write_text(profiler.output_html())
        spans = overheads(app, users)
        took = sorted(spans.values())
        if args.timeline:
            print_timeline(app, max(spans, key=lambda login: spans[login]))
        median, slowest = statistics.median(took), took[-1]
        print(f"{args.users} users x {MESSAGES} messages logging in at once through serve "
              f"(concurrency {CONCURRENCY}, engine {args.engine}); all done in {wall:.1f} s")
        print(f"naive imapclient loop, one such mailbox: {baseline * 1000:.0f} ms (median of {NAIVE_SAMPLES})")
        print(f"PasswordVerified -> MigrationCompleted: median {median * 1000:.0f} ms ({median / baseline:.1f}x), "
              f"slowest {slowest * 1000:.0f} ms ({slowest / baseline:.1f}x)  [targets: 10x, 30x]")
        equal = verify_all(config_path, users)
        print(f"verify: {equal} of {len(users)} accounts equal")
        return 0 if equal == len(users) else 1
    finally:
        old.stop()
        new.stop()


if __name__ == "__main__":
    sys.exit(main())
