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
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from mailmigrator.adapters.mail.copier import CopyProgress
from mailmigrator.domain.use_cases.bulk import MigrateMany
from mailmigrator.domain.errors import DomainError
from mailmigrator.ops.bulk import BulkEntry, BulkProblem
from mailmigrator.ops.config import Config, ConfigError
from mailmigrator.ops.composition import Migration, build_migration
from mailmigrator.ops.composition import OpenStore

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
    many: MigrateMany | None = None
    refused: list[AccountOutcome] = field(default_factory=list)
    progress: CopyProgress = field(default_factory=CopyProgress)
    submitted: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def outcomes(self) -> list[AccountOutcome]:
        """Each account done so far, in the order they finished."""
        done = self.many.outcomes if self.many is not None else []
        return self.refused + [AccountOutcome(o.login, o.ok, o.message) for o in done]

    def to_json(self) -> dict[str, Any]:
        p = self.progress
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "accounts": len(self.logins),
            "logins": self.logins[:20],
            "current": list(self.many.current) if self.many is not None else [],
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


class ManualMigrations:
    """Queued manual migrations, run one job at a time by `run` inside the console's nursery."""

    def __init__(self, config: Config, wired: OpenStore, migration: Migration | None = None) -> None:
        self.config = config
        self.wired = wired
        # In `serve`, the node's own migration use case; otherwise built at the first job.
        self._migration = migration
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
        try:
            migration = await self.migration()
        except (ConfigError, DomainError) as e:
            job.refused = [AccountOutcome(entry.login, False, str(e)) for entry in job.entries]
        else:
            job.many = MigrateMany(migration.migrate, self.config.migration.concurrency)
            for outcome in await job.many.run(job.entries, progress=job.progress):
                log.info("manual migration", login=outcome.login, ok=outcome.ok, result=outcome.message)
        finally:
            job.entries.clear()  # the passwords go with them
            job.finished = time.time()
            job.state = "done" if all(o.ok for o in job.outcomes) else "failed"

    async def migration(self) -> Migration:
        """The migration use case every job runs."""
        if self._migration is None:
            self._migration = await trio.to_thread.run_sync(
                lambda: build_migration(self.config, self.wired.app, need_target=False))
        return self._migration


def single_entry(login: str, password: str) -> BulkEntry:
    """The Manual tab's single user as a bulk entry (line 0)."""
    return BulkEntry(0, login, password)
