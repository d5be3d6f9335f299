"""`MigrateMany` makes accounts ready ahead of the copies within a bound, and keeps the lines' order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import trio

from mailmigrator.domain.use_cases.bulk import MigrateMany
from mailmigrator.domain.use_cases.migrate_account import MigrateAccount, MigrationOutcome


@dataclass(frozen=True)
class Line:
    login: str
    password: str = "secret"
    alias: str | None = None


class ReadyThenCopied:
    """Stands in for `MigrateAccount.with_password`: verify and create under the first slot, copy under the second."""

    def __init__(self) -> None:
        self.ready = 0  # created, copy not finished
        self.most_ready = 0

    async def with_password(self, typed: str, login: str, password: str, *, slots: tuple[trio.Semaphore, ...],
                            **_: Any) -> MigrationOutcome:
        async with slots[0]:
            await trio.sleep(0.001)
            self.ready += 1
            self.most_ready = max(self.most_ready, self.ready)
        async with slots[1]:
            await trio.sleep(0.01)
        self.ready -= 1
        return MigrationOutcome(login, True, "")


async def test_accounts_are_made_ready_ahead_of_the_copies_within_four_times_concurrency() -> None:
    fake = ReadyThenCopied()
    many = MigrateMany(cast(MigrateAccount, fake), concurrency=3)
    lines = [Line(f"user{i}@example.com") for i in range(40)]
    outcomes = await many.run(lines)
    assert [o.login for o in outcomes] == [line.login for line in lines]
    assert many.done == 40 and many.failed == 0
    # 3 copying and at most 9 made ready behind them.
    assert fake.most_ready <= 12, fake.most_ready
    assert fake.most_ready >= 4, "the next accounts are made ready while the copies run"
