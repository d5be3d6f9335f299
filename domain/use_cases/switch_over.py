"""Switch an account to the new server once its first copy has caught up while the user kept working.

The switch locks the account (`SwitchStarted`: logins wait), closes the user's
open sessions to the old server so that nothing changes there any more, runs
the copy engine once more from the checkpoints (the final delta), which
records `MigrationCompleted`, and then records `SwitchedOver` with what the
switch took. A switch interrupted by a crash is resumed from `switching` by
the same steps: the claim is taken again, sessions closed again (none, or
those that reached the old server on another node), the delta copies what is
still missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import structlog

from mailmigrator.domain.credentials import Credentials
from mailmigrator.domain.errors import AccountBusy
from mailmigrator.domain.model import DEFAULT_LEASE_SECONDS
from mailmigrator.domain.states import MOVED_STATES
from mailmigrator.domain.use_cases.move_filters import MoveFilters
from mailmigrator.domain.use_cases.ports import ClientSessions, Copier, CopyResult, NoClientSessions, Progress
from mailmigrator.domain.use_cases.records import MigrationRecords

log = structlog.get_logger("mailmigrator.switch")


@dataclass
class SwitchOutcome:
    """How one switch ended."""

    login: str
    ok: bool
    message: str
    result: CopyResult | None = None
    busy: bool = False
    sessions_closed: int = 0
    delta_messages: int = 0
    duration_seconds: float = 0.0


@dataclass
class SwitchOver:
    """Moves a copied account's users from the old server to the new one."""

    records: MigrationRecords
    copier: Copier
    sessions: ClientSessions = field(default_factory=NoClientSessions)
    node: str = ""
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    clock: Callable[[], float] = time.monotonic
    # Sieve scripts move after the old sessions are closed, before the final delta.
    filters: MoveFilters | None = None

    async def run(self, login: str, credentials: Credentials, target_login: str,
                  progress: Progress | None = None) -> SwitchOutcome:
        """Claim the switch, close the old sessions, copy the final delta, record the switch."""
        started = self.clock()
        before = await self.records.account(login)
        copied_before = sum(f.messages for f in before.folders.values())
        try:
            await self.records.switch_started(login, self.node, datetime.now(timezone.utc), self.lease_seconds)
        except AccountBusy as e:
            return SwitchOutcome(login, False, str(e), busy=True)
        closed = await self.sessions.close_old_sessions(login)
        if self.filters is not None:
            await self.filters.run(login, credentials, target_login)
        result = await self.copier.copy(login, credentials.login, credentials.password or None, target_login,
                                        progress)
        if not result.ok:
            return SwitchOutcome(login, False, result.error or "final delta failed", result, busy=result.busy,
                                 sessions_closed=closed)
        delta = max(0, result.messages - copied_before)
        duration = self.clock() - started
        await self.records.switched_over(login, duration, closed, delta)
        log.info("switched over", login=login, duration_seconds=round(duration, 3), sessions_closed=closed,
                 delta_messages=delta)
        return SwitchOutcome(login, True, f"switched over in {duration:.2f} s ({delta:,} messages in the final delta)",
                             result, sessions_closed=closed, delta_messages=delta, duration_seconds=duration)


async def close_moved_sessions(records: MigrationRecords, sessions: ClientSessions) -> int:
    """Close this node's old-server sessions of accounts that are switching or switched (by any node)."""
    closed = 0
    for login in sessions.open_logins():
        account = await records.account_or_none(login)
        if account is not None and account.state in MOVED_STATES:
            count = await sessions.close_old_sessions(login)
            if count:
                log.info("old-server sessions closed: the account moved", login=login, sessions=count)
            closed += count
    return closed
