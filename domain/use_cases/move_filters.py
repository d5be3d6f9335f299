"""Move one account's Sieve scripts, and which one is active, once: in the pass that completes its migration.

That pass is the only copy with the notice (or refusal) in front of the user,
and the final delta of a switch; an account resumed after its scripts moved
does not move them again. What moved, what the new server refused (with its
reason) and a server without ManageSieve are recorded; a server that cannot
answer fails the migration like a mail server that cannot, to be retried.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
import trio

from mailmigrator.domain.credentials import Credentials
from mailmigrator.domain.filters import FilterReport
from mailmigrator.domain.use_cases.ports import FilterCopier
from mailmigrator.domain.use_cases.records import MigrationRecords

log = structlog.get_logger("mailmigrator.filters")


@dataclass
class MoveFilters:
    """The Sieve step of a migration (`[migration] sieve = true`)."""

    records: MigrationRecords
    copier: FilterCopier

    async def run(self, login: str, credentials: Credentials, target_login: str) -> FilterReport | None:
        """Move the scripts unless they moved already; None when they had."""
        if (await self.records.account(login)).filters_moved:
            return None
        report = await trio.to_thread.run_sync(self.copier.copy_filters, credentials.login, login,
                                               credentials.password or None, target_login)
        await self.records.filters(login, report)
        if report.not_offered:
            log.warning("sieve scripts not moved", login=login, reason=report.not_offered,
                        scripts=[r["name"] for r in report.refused])
            return report
        log.info("sieve scripts moved", login=login, scripts=[s["name"] for s in report.copied],
                 active=report.active)
        for refused in report.refused:
            log.warning("sieve script refused by the new server", login=login, script=refused["name"],
                        reason=refused["reason"])
        return report
