"""Migrate many accounts whose passwords the admin gave (a bulk file, the console's Manual tab), a few at a time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from mailmigrator.domain.use_cases.migrate_account import MigrateAccount, MigrationOutcome
from mailmigrator.domain.use_cases.ports import Progress


class BulkLine(Protocol):
    """One account of a bulk request (`ops.bulk.BulkEntry`)."""

    @property
    def login(self) -> str: ...

    @property
    def password(self) -> str: ...

    @property
    def alias(self) -> str | None: ...


@dataclass
class MigrateMany:
    """Verifies and migrates each line, `concurrency` at a time; the counters are for a progress display."""

    migrate: MigrateAccount
    concurrency: int
    done: int = 0
    failed: int = 0
    current: list[str] = field(default_factory=list)
    outcomes: list[MigrationOutcome] = field(default_factory=list)

    async def run(self, lines: Sequence[BulkLine], *, typed: str | None = None, method: str = "manual",
                  progress: Progress | None = None) -> list[MigrationOutcome]:
        """Migrate every line; the outcomes in the lines' order (`outcomes` has them as they finish)."""
        # Accounts are verified and created ahead of the copies, so that a copy slot never waits for a password
        # check; at most four times `concurrency` are in flight, copying or ready (a narrower window slowed
        # a fleet down: bench/README).
        slots = (trio.Semaphore(self.concurrency), trio.Semaphore(self.concurrency))
        in_flight = trio.Semaphore(4 * self.concurrency)
        ordered: dict[int, MigrationOutcome] = {}

        async def one(index: int, line: BulkLine) -> None:
            async with in_flight:
                self.current.append(line.login)
                try:
                    outcome = await self.migrate.with_password(
                        typed or line.login, line.login, line.password,
                        aliases=[line.alias] if line.alias else [], method=method, progress=progress, slots=slots)
                finally:
                    self.current.remove(line.login)
            ordered[index] = outcome
            self.outcomes.append(outcome)
            self.done += 1
            self.failed += not outcome.ok

        async with trio.open_nursery() as nursery:
            for index, line in enumerate(lines):
                nursery.start_soon(one, index, line)
        return [ordered[i] for i in range(len(lines))]
