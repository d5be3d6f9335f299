"""`mailmigrator verify --all`: every completed or swept account compared old against new, results recorded.

Resumable: an account whose recorded comparison is newer than its last copy or sweep is not compared
again unless `--again`. An account with neither the admin login nor a stored password is reported as
not verifiable, and so is one whose servers refused the comparison; both make the exit status 1.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import trio

from mailmigrator.domain.errors import MigrationRefused
from mailmigrator.domain.states import SETTLED_STATES
from mailmigrator.ops.cli import EXIT_FAILED, EXIT_OK, compare_mailboxes, comparison_examples
from mailmigrator.ops.composition import OpenStore, mail_servers, open_store, open_vault
from mailmigrator.ops.config import Config
from mailmigrator.ops.manual_migration import show_progress
from mailmigrator.projections.accounts import AccountDoc


def needs_comparison(doc: AccountDoc, again: bool) -> bool:
    verify = doc.get("verify")
    if again or not verify:
        return True
    copied = max(doc.get("completed_at") or "", doc.get("swept_at") or "")
    return bool(verify["at"] < copied)


@dataclass
class VerifyProgress:
    total: int
    equal: int = 0
    differ: int = 0
    unverifiable: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        done = self.equal + self.differ + self.unverifiable
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = done / elapsed
        left = int((self.total - done) / rate) if rate > 0 else None
        eta = f"{left // 60}:{left % 60:02d}" if left is not None else "?"
        return (f"accounts {done}/{self.total}: {self.equal} equal, {self.differ} differ, "
                f"{self.unverifiable} not verifiable, {rate:,.1f} accounts/s, ETA {eta}")


def verify_all(config: Config, *, again: bool) -> int:
    wired = open_store(config, create=False)
    if wired is None:
        print("mailmigrator: no events recorded yet; nothing to verify", file=sys.stderr)
        return EXIT_OK
    try:
        wired.views.catch_up()
        return _verify(config, wired, again)
    finally:
        wired.close()


def _verify(config: Config, wired: OpenStore, again: bool) -> int:
    docs = [d for d in wired.views.accounts() if d["state"] in SETTLED_STATES]
    todo = [d for d in docs if needs_comparison(d, again)]
    skipped = len(docs) - len(todo)
    # Not compared again, but a difference recorded before still fails the run.
    problems = [f"{d['login']}: differed when last compared at {v['at']}"
                for d in docs if d not in todo and (v := d.get("verify")) and not v["equal"]]
    admin = config.source is not None and bool(config.source.admin_user)
    vault = None if admin else open_vault(config, wired.app)
    servers = mail_servers(config)
    node = config.migration.node_name
    progress = VerifyProgress(len(todo))

    # The password: None logs in with the admin login; a missing vault entry means not verifiable.
    passwords: dict[str, str | None] = {}
    for doc in todo:
        password = None if admin else (vault.get(doc["login"]) if vault is not None else None)
        if not admin and password is None:
            progress.unverifiable += 1
            problems.append(f"{doc['login']}: not verifiable: no [source] admin login and no stored password")
            continue
        passwords[doc["login"]] = password

    def compare(doc: AccountDoc) -> list[str]:
        login = doc["login"]
        return compare_mailboxes(config, servers, login, login, passwords[login], doc["target_login"] or login,
                                 doc.get("engine") == "dovecot")

    async def one(doc: AccountDoc, limit: trio.CapacityLimiter) -> None:
        async with limit:
            try:
                differences = await trio.to_thread.run_sync(compare, doc)
            except MigrationRefused as e:
                progress.unverifiable += 1
                problems.append(f"{doc['login']}: not verifiable: {e}")
                return
        wired.app.record_comparison(doc["login"], not differences, len(differences),
                                    comparison_examples(differences), node)
        if differences:
            progress.differ += 1
            problems.append(f"{doc['login']}: {len(differences)} difference(s): {differences[0]}")
        else:
            progress.equal += 1

    async def run() -> None:
        limit = trio.CapacityLimiter(max(1, config.migration.concurrency))
        async with trio.open_nursery() as outer:
            outer.start_soon(show_progress, progress.line, sys.stderr, sys.stderr.isatty())
            async with trio.open_nursery() as nursery:
                for doc in todo:
                    if doc["login"] in passwords:
                        nursery.start_soon(one, doc, limit)
            outer.cancel_scope.cancel()

    trio.run(run)
    if not sys.stderr.isatty():  # a terminal's progress line ends in this state already
        print(f"progress: {progress.line()}", file=sys.stderr)
    for line in sorted(problems):
        print(line)
    print(f"{progress.equal} equal, {progress.differ} differ, {progress.unverifiable} not verifiable, "
          f"{skipped} already compared since their last copy (--again compares them too)")
    return EXIT_FAILED if problems else EXIT_OK
