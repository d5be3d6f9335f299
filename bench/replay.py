"""Replay benchmark: rebuild every projection from N events, against a plain read of the same rows.

    python bench/replay.py [--events 100000] [--store sqlite|postgresql] [--record bulk|service]

Prints the time to record the history (once, cached per size), the time of a plain sequential
read of the notifications (the ceiling: no decoding, no folding, no writing), the time of
`replay`, events per second of each and the ratio; asserts the replayed views equal the live
ones (built first by the follower's ordinary batches).

`--record bulk` (the default) builds the same histories as `record_sample_accounts` on
in-memory aggregates and saves a few hundred aggregates per `app.save(...)` call, so a
million events are recorded in minutes instead of one transaction per event.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
import tempfile
import time
from pathlib import Path

from mailmigrator.adapters.store.event_store import parse_store_url, store_environment
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.model import AccountMigration
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the Dovecot test bed
from sample_history import FOLDERS, record_sample_accounts
from mailmigrator.projections.follower import MigrationViews
from scratch_store import scratch_store_url


def record(app: MigrationService, events: int) -> None:
    first = 0
    while (app.recorder.max_notification_id() or 0) < events:
        record_sample_accounts(app, first, 50)
        first += 50
        done = app.recorder.max_notification_id() or 0
        print(f"\r  recording history: {done:,}/{events:,} events", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def sample_account(n: int, checkpoints: int = 2) -> AccountMigration:
    """The history `record_sample_accounts` records for account n, on one unsaved aggregate."""
    login = f"user{n}@example.com"
    account = AccountMigration(login=login)
    account.see_login("imap", f"127.0.0.{n % 200 + 2}", "127.0.0.1")
    if n % 5 == 0:
        account.reject_password("authentication failed")
    account.verify_password("imap-login")
    account.create_account(login, [], "passwd-file")
    plan = [{"source": f, "target": f, "messages": 10 * checkpoints, "bytes": 20_000} for f in FOLDERS]
    account.start_migration(plan, len(plan) * 10 * checkpoints, len(plan) * 20_000, 1)
    if n % 7 == 0:
        account.fail_migration("connection reset by old server", True)
        account.start_migration(plan, len(plan) * 10 * checkpoints, len(plan) * 20_000, 2)
    for folder in FOLDERS:
        for step in range(checkpoints):
            account.copy_folder(folder, folder, 1000 + n, 10 * (step + 1), 10, 10_000 // checkpoints, [],
                                step == checkpoints - 1)
    account.complete_migration(len(FOLDERS) * 10 * checkpoints, len(FOLDERS) * 10_000, len(FOLDERS), 2.5, False)
    account.record_post_script(0, 0.1, False)
    return account


def record_bulk(app: MigrationService, events: int, batch: int = 500) -> None:
    first = _accounts_recorded(app, batch)
    while (app.recorder.max_notification_id() or 0) < events:
        app.save(*(sample_account(n) for n in range(first, first + batch)))
        first += batch
        done = app.recorder.max_notification_id() or 0
        print(f"\r  recording history (bulk): {done:,}/{events:,} events", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def _accounts_recorded(app: MigrationService, batch: int) -> int:
    """Where an interrupted bulk recording resumes: batches are saved whole or not at all."""
    n = 0
    while app.has_account(f"user{n}@example.com"):
        n += batch
    return n


def plain_read(app: MigrationService) -> int:
    count, start = 0, 1
    while True:
        rows = app.recorder.select_notifications(start=start, limit=1000)
        if not rows:
            return count
        count += len(rows)
        start = rows[-1].id + 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--record", choices=("bulk", "service"), default="bulk")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "mailmigrator-bench")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    sqlite_url = f"sqlite://{args.dir / f'replay-{args.events}-{args.record}.sqlite'}"
    with scratch_store_url(args.store, sqlite_url) as url:
        app = MigrationService(env=store_environment(parse_store_url(url, args.dir)))
        started = time.perf_counter()
        (record_bulk if args.record == "bulk" else record)(app, args.events)
        recorded = time.perf_counter() - started
        total = app.recorder.max_notification_id()
        views = MigrationViews(app, log_file=args.dir / f"replay-{args.store}.log")
        if views.store.position() == 0:  # new views: a log file left by another store's run is not theirs
            (args.dir / f"replay-{args.store}.log").unlink(missing_ok=True)

        started = time.perf_counter()
        read = plain_read(app)
        read_s = time.perf_counter() - started

        # The live views: the follower's ordinary batches, as serve applies them.
        views.catch_up()
        live = (views.run_status(), views.accounts(), views.store.log_count())
        log_file = args.dir / f"replay-{args.store}.log"
        live_log = hashlib.sha256(log_file.read_bytes()).hexdigest()

        started = time.perf_counter()
        replayed = views.replay()
        replay_s = time.perf_counter() - started
        assert replayed == read == total, (replayed, read, total)
        assert (views.run_status(), views.accounts(), views.store.log_count()) == live, "replayed views differ"
        replayed_log = log_file.read_bytes()
        assert hashlib.sha256(replayed_log).hexdigest() == live_log, "replayed log file differs"
        assert replayed_log == "".join(line + "\n" for line in views.log_lines()).encode(), "log file is not the log"
        accounts = len(live[1])
        app.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"store: {args.store}   events: {total:,}   accounts: {accounts:,}")
    print(f"record history ({args.record}):  {recorded:8.1f} s   (about 0 when cached from an earlier run)")
    print(f"plain read (ceiling):   {read_s:8.2f} s   {read / read_s:12,.0f} events/s")
    print(f"replay (all views+log): {replay_s:8.2f} s   {replayed / replay_s:12,.0f} events/s")
    print(f"replay / plain read:    {(replayed / replay_s) / (read / read_s):8.2f} of the ceiling")
    print("views and log file equal the live ones")
    print(f"peak RSS: {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
