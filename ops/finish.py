"""`mailmigrator finish`: the finish sweep from the command line, or waiting for the `serve` node doing it.

`finish` does the work itself unless a running `serve` already claimed it; a
running `serve` keeps routing logins and shows the run as `finishing` until
`FinishCompleted`.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable

import structlog
import trio

from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.use_cases.finish_sweep import FinishReport
from mailmigrator.domain.use_cases.first_login import PRECOPIED_STATES
from mailmigrator.ops.composition import Migration, build_finish, build_migration, require_source
from mailmigrator.ops.config import Config
from mailmigrator.ops.manual_migration import show_progress
from mailmigrator.ops.composition import open_store
from mailmigrator.projections.follower import MigrationViews
from mailmigrator.projections.log import human_bytes

log = structlog.get_logger("mailmigrator.finish")


async def finish_migration(config: Config, app: MigrationService, views: MigrationViews,
                           migration: Migration, *, show_progress_line: bool = False) -> FinishReport:
    """The finish work, once claimed: complete what is pending, sweep every migrated account, record FinishCompleted."""

    async def show(line: Callable[[], str]) -> None:
        await show_progress(line, sys.stderr, sys.stderr.isatty())

    report = await build_finish(config, app, views, migration).run(show if show_progress_line else None)
    await trio.to_thread.run_sync(views.catch_up)
    return report


def cmd_finish(config: Config, args: argparse.Namespace) -> int:
    """Record Finish Migration, complete pending accounts, sweep, record FinishCompleted; exit 1 when any failed."""
    from mailmigrator.ops.logs import configure_logging

    configure_logging()
    require_source(config)
    wired = open_store(config, create=True)
    assert wired is not None
    try:
        app = wired.app
        app.configure_run(config.general_settings())
        app.request_finish("cli")
        started = time.monotonic()
        if not app.claim_finish(config.migration.node_name):
            return _wait_for_finish_elsewhere(app, started)
        report = trio.run(functools.partial(finish_migration, config, app, wired.views, build_migration(config, app),
                                             show_progress_line=True))
        wired.views.catch_up()
        precopied = wired.views.logins_in(PRECOPIED_STATES)
    finally:
        wired.close()
    swept = [a for a in report.accounts if a.result == "swept"]
    width = max([len("LOGIN")] + [len(a.login) for a in report.accounts])
    if report.accounts:
        print(f"{'LOGIN':{width}}  {'RESULT':11}  {'LATE':>6}  {'SIZE':>10}  DETAIL")
        for a in sorted(report.accounts, key=lambda a: (a.login, a.result)):
            print(f"{a.login:{width}}  {a.result:11}  {a.messages:>6,}  {human_bytes(a.bytes):>10}  {a.detail}")
    needs_login = sum(a.result == "needs-login" for a in report.accounts)
    print(f"finish: {len(swept)} account(s) swept, {sum(a.messages for a in swept):,} late message(s) copied, "
          f"{needs_login} need the user to log in again, {len(report.failed)} failed "
          f"({time.monotonic() - started:.1f} s)")
    for line in never_migrated_lines(report.never_migrated, bool(config.source and config.source.admin_user)):
        print(line)
    waiting = sorted(login for logins in precopied.values() for login in logins)
    if waiting:
        # Their mail is on the new server, but no password opens it until the owner logs in once.
        print(f"finish: {len(waiting)} pre-copied account(s) whose owner never logged in (unusable on the new "
              f"server until then; `migrate --bulk` with their passwords moves them now): {', '.join(waiting)}")
    return 1 if report.failed else 0


NEVER_MIGRATED_SHOWN = 20


def never_migrated_lines(logins: list[str], admin_login: bool) -> list[str]:
    """What `finish` says of the roster accounts whose owner never logged in, and what would move them."""
    if not logins:
        return []
    precopy = ("`mailmigrator precopy` copies them now with [source] admin_user" if admin_login
               else "`mailmigrator precopy` can copy them once [source] admin_user is set")
    shown = ", ".join(logins[:NEVER_MIGRATED_SHOWN]) + (", ..." if len(logins) > NEVER_MIGRATED_SHOWN else "")
    return [f"finish: {len(logins)} roster account(s) never migrated (the user never logged in): {shown}",
            f"finish: to move them, `mailmigrator migrate --bulk FILE` with their passwords, or {precopy}; "
            "`mailmigrator status --state expected` lists them all"]


def _wait_for_finish_elsewhere(app: MigrationService, started: float) -> int:
    """A running `serve` took the finish work on; follow it until the run is finished."""
    run = app.run()
    print(f"finish: being done by {run.finish_claimed_by}; waiting (Ctrl-C leaves it running there)", file=sys.stderr)
    while run.state == "finishing":
        time.sleep(2.0)
        run = app.run()
    if run.state != "finished":
        print(f"finish: the run went to {run.state!r} before the finish completed", file=sys.stderr)
        return 1
    print(f"finish: completed by {run.finish_claimed_by} ({time.monotonic() - started:.1f} s); "
          "`mailmigrator log` has the details")
    return 0
