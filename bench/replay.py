"""Replay benchmark: rebuild every projection from N events, against a plain read of the same rows.

    python bench/replay.py [--events 100000] [--store sqlite|postgresql]

Prints the time to record the history (once, cached per size), the time of a plain sequential
read of the notifications (the ceiling: no decoding, no folding, no writing), the time of
`replay`, events per second of each and the ratio.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from mailmigrator.adapters.store import parse_store_url, store_environment
from mailmigrator.domain.application import MigrationService
from mailmigrator.ops.sample_history import record_sample_accounts
from mailmigrator.projections.follower import MigrationViews


def record(app: MigrationService, events: int) -> None:
    first = 0
    while (app.recorder.max_notification_id() or 0) < events:
        record_sample_accounts(app, first, 50)
        first += 50
        done = app.recorder.max_notification_id() or 0
        print(f"\r  recording history: {done:,}/{events:,} events", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


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
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "mailmigrator-bench")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    dbname = None
    if args.store == "sqlite":
        url = f"sqlite://{args.dir / f'replay-{args.events}.sqlite'}"
    else:
        dbname = f"mm_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        url = f"postgresql://postgres@127.0.0.1:5432/{dbname}"
    try:
        app = MigrationService(env=store_environment(parse_store_url(url, args.dir)))
        started = time.perf_counter()
        record(app, args.events)
        recorded = time.perf_counter() - started
        total = app.recorder.max_notification_id()
        views = MigrationViews(app, log_file=args.dir / f"replay-{args.store}.log")

        started = time.perf_counter()
        read = plain_read(app)
        read_s = time.perf_counter() - started

        started = time.perf_counter()
        replayed = views.replay()
        replay_s = time.perf_counter() - started
        assert replayed == read == total, (replayed, read, total)
        accounts = len(views.accounts())
        app.close()
    finally:
        if dbname:
            with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"store: {args.store}   events: {total:,}   accounts: {accounts:,}")
    print(f"record history (once):  {recorded:8.1f} s")
    print(f"plain read (ceiling):   {read_s:8.2f} s   {read / read_s:12,.0f} events/s")
    print(f"replay (all views+log): {replay_s:8.2f} s   {replayed / replay_s:12,.0f} events/s")
    print(f"replay / plain read:    {(replayed / replay_s) / (read / read_s):8.2f} of the ceiling")
    print(f"peak RSS: {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
