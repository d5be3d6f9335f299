"""The Manual tab: migrate one user, or every user of a bulk file, now.

The steps are the shared `MigrateAccount` use case (the CLI's `migrate --user` and
`--bulk`, the proxy's workers), run inside serve's trio loop, so that a
SIGTERM cancels a manual copy like any other (it resumes from its last
checkpoint). Passwords live only in the queued job, are dropped as soon as
the account is done, and never appear in its JSON, a log line or an event.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from mailmigrator.adapters.mail.copier import CopyProgress
from mailmigrator.domain.errors import DomainError
from mailmigrator.ops.bulk import BulkEntry, BulkProblem
from mailmigrator.ops.config import Config, ConfigError
from mailmigrator.ops.composition import build_migration
from mailmigrator.ops.wiring import Wired

log = structlog.get_logger("mailmigrator.console")

MAX_QUEUED_JOBS = 16
KEPT_JOBS = 50


@dataclass
class AccountOutcome:
    login: str
    ok: bool
    message: str


@dataclass
class ManualJob:
    """One manual migration request: a single user or a bulk file."""

    id: int
    kind: str
    logins: list[str]
    problems: list[BulkProblem]
    entries: list[BulkEntry] = field(repr=False)
    state: str = "queued"
    current: list[str] = field(default_factory=list)
    outcomes: list[AccountOutcome] = field(default_factory=list)
    progress: CopyProgress = field(default_factory=CopyProgress)
    submitted: float = field(default_factory=time.time)
    finished: float | None = None

    def to_json(self) -> dict[str, Any]:
        p = self.progress
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "accounts": len(self.logins),
            "logins": self.logins[:20],
            "current": list(self.current),
            "problems": [str(problem) for problem in self.problems],
            "outcomes": [vars(o) for o in self.outcomes],
            "messages": p.messages,
            "total_messages": p.total_messages,
            "bytes": p.bytes,
            "total_bytes": p.total_bytes,
            "accounts_done": sum(1 for o in self.outcomes if o.ok),
            "accounts_failed": sum(1 for o in self.outcomes if not o.ok),
            "line": p.line() if self.state == "running" else "",
            "submitted": self.submitted,
            "finished": self.finished,
        }


class QueueFull(Exception):
    """Too many manual migrations are waiting; try again when some are done."""


AccountMigrator = Callable[[Config, Wired, BulkEntry, CopyProgress], Awaitable[AccountOutcome]]


class ManualMigrations:
    """Queued manual migrations, run one job at a time by `run` inside the console's nursery."""

    def __init__(self, config: Config, wired: Wired, migrate: AccountMigrator | None = None) -> None:
        self.config = config
        self.wired = wired
        self.migrate = migrate or migrate_account
        self.jobs: dict[int, ManualJob] = {}
        self._ids = itertools.count(1)
        self._send, self._receive = trio.open_memory_channel[ManualJob](MAX_QUEUED_JOBS)

    def submit(self, kind: str, entries: list[BulkEntry], problems: list[BulkProblem]) -> ManualJob:
        job = ManualJob(next(self._ids), kind, [e.login for e in entries], problems, list(entries))
        if not entries:
            job.state = "done"
            job.finished = time.time()
        else:
            try:
                self._send.send_nowait(job)
            except trio.WouldBlock:
                raise QueueFull(f"{MAX_QUEUED_JOBS} manual migrations are already waiting; try again later") from None
        self.jobs[job.id] = job
        for old in sorted(self.jobs)[:-KEPT_JOBS]:
            if self.jobs[old].state in ("done", "failed"):
                del self.jobs[old]
        return job

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Work through the queue until cancelled."""
        task_status.started()
        async for job in self._receive:
            await self._run_job(job)

    async def _run_job(self, job: ManualJob) -> None:
        job.state = "running"
        slots = trio.Semaphore(self.config.migration.concurrency)

        async def one(entry: BulkEntry) -> None:
            async with slots:
                job.current.append(entry.login)
                try:
                    outcome = await self.migrate(self.config, self.wired, entry, job.progress)
                finally:
                    job.current.remove(entry.login)
                job.outcomes.append(outcome)
                log.info("manual migration", login=entry.login, ok=outcome.ok, result=outcome.message)

        try:
            async with trio.open_nursery() as nursery:
                for entry in job.entries:
                    nursery.start_soon(one, entry)
        finally:
            job.entries.clear()  # the passwords go with them
            job.finished = time.time()
            job.state = "done" if all(o.ok for o in job.outcomes) else "failed"


async def migrate_account(config: Config, wired: Wired, entry: BulkEntry, progress: CopyProgress) -> AccountOutcome:
    """Verify, create, copy, complete, post-migrate script: the shared migration flow."""
    try:
        migration = await trio.to_thread.run_sync(
            lambda: build_migration(config, wired.app, progress=progress, need_target=False))
    except (ConfigError, DomainError) as e:
        return AccountOutcome(entry.login, False, str(e))
    aliases = [entry.alias] if entry.alias else []
    outcome = await migration.migrate.with_password(entry.login, entry.login, entry.password, aliases=aliases)
    return AccountOutcome(entry.login, outcome.ok, outcome.message)


def single_entry(login: str, password: str) -> BulkEntry:
    """The Manual tab's single user as a bulk entry (line 0)."""
    return BulkEntry(0, login, password)
