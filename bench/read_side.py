"""Read-side benchmark: the console and status at N accounts in the views, against a plain SQL count.

    python bench/read_side.py [--accounts 100000] [--store sqlite|postgresql]

Writes N account rows straight into the views (states spread over the account states, a tenth
failed), then times the console's account page and /api status, `status --json`, `status --state
failed`, and a plain `SELECT COUNT(*)` of the account table as the baseline; prints peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import resource
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from mailmigrator.domain.states import ACCOUNT_STATES
from mailmigrator.ops.cli import build_parser, cmd_status
from mailmigrator.ops.composition import open_store
from mailmigrator.ops.config import load_config
from mailmigrator.ops.console.queries import AccountQuery, ConsoleQueries
from mailmigrator.projections.accounts import new_account_doc
from mailmigrator.projections.viewstore import ViewBatch
from scratch_store import scratch_store_url

AT = "2026-11-28T10:00:00.000000+00:00"


def timed(what: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        what()
        best = min(best, time.perf_counter() - started)
    return best


def fill(store: object, accounts: int) -> None:
    states = [s for s in ACCOUNT_STATES if s != "failed"]
    # Rows written beside the events, not from them: the position stays where the events are.
    batch = ViewBatch(start_position=store.position(), end_position=store.position())  # type: ignore[attr-defined]
    for n in range(accounts):
        doc = new_account_doc(f"user{n}@example.com", AT)
        doc["state"] = "failed" if n % 10 == 0 else states[n % len(states)]
        doc["messages"], doc["bytes"] = n % 500, n % 500 * 20_000
        doc["folders"] = {"INBOX": {"source": "INBOX", "target": "INBOX", "messages": n % 500, "bytes": 0,  # type: ignore[typeddict-item]
                                    "uidvalidity": 1, "uidnext": n % 500 + 1}}
        if n % 3:
            doc["started_at"] = AT
            doc["updated_at"] = f"2026-11-28T{10 + n % 12:02d}:{n % 60:02d}:00.000000+00:00"
        if doc["state"] == "failed":
            doc["error"] = "connection reset by old server"
        batch.accounts[str(uuid.uuid5(uuid.NAMESPACE_DNS, doc["login"]))] = doc
    store.commit(batch)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mm-read-side-"))
    with scratch_store_url(args.store, f"sqlite:///{work / 'events.sqlite'}") as url:
        config_file = work / "mailmigrator.toml"
        config_file.write_text(f'[store]\nurl = "{url}"\n[migration]\nlog_file = "{work / "migration.log"}"\n'
                               'primary_domain = "example.com"\nmigration_account = "migration@example.com"\n')
        config = load_config(config_file)
        wired = open_store(config, create=True)
        assert wired is not None
        wired.app.configure_run({"migration_account": "migration@example.com"})
        wired.views.catch_up()
        fill(wired.views.store, args.accounts)
        queries = ConsoleQueries(config, wired)
        assert queries.accounts(AccountQuery())["total"] == args.accounts
        count_s = timed(lambda: wired.views.account_count())
        # A fresh ConsoleQueries each time: its cache of the totals would hide their cost.
        page_s = timed(lambda: ConsoleQueries(config, wired).accounts(AccountQuery(offset=args.accounts // 2)))
        api_s = timed(lambda: ConsoleQueries(config, wired).run())

        def status(*argv: str) -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                assert cmd_status(config, build_parser().parse_args(["status", *argv])) == 0

        json_s = timed(lambda: status("--json"), repeat=1)
        failed_s = timed(lambda: status("--state", "failed"))
        wired.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"store: {args.store}   accounts: {args.accounts:,}")
    print(f"plain SQL count (baseline):   {count_s * 1000:8.1f} ms")
    print(f"console account page (mid):   {page_s * 1000:8.1f} ms   {page_s / count_s:6.1f}x the count")
    print(f"/api status:                  {api_s * 1000:8.1f} ms   {api_s / count_s:6.1f}x the count")
    print(f"status --json:                {json_s * 1000:8.1f} ms   {json_s / count_s:6.1f}x the count")
    print(f"status --state failed:        {failed_s * 1000:8.1f} ms   {failed_s / count_s:6.1f}x the count")
    print(f"peak RSS (this process, status --json included): {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
