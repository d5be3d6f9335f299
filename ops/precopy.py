"""`mailmigrator precopy [--all | LOGIN...]`: copy roster accounts' mail before their owners log in.

Reads the old server with `[source] admin_user` and writes through the new server's master user,
`[migration] concurrency` accounts at a time under the same per-host limits as `migrate`, with the
same progress line. A second run copies only what arrived since the first.
"""

from __future__ import annotations

import argparse
import sys

import trio

from mailmigrator.domain.logins import normalise_login
from mailmigrator.domain.states import PRECOPYABLE_STATES
from mailmigrator.domain.use_cases.precopy import PreCopy
from mailmigrator.ops.composition import build_migration, open_store, require_source, require_target
from mailmigrator.ops.config import Config, ConfigError
from mailmigrator.ops.manual_migration import EXIT_FAILED, EXIT_OK, BatchProgress, result_table, show_progress

# `--all`: roster accounts never seen, and those pre-copied before (a refresh pass).
ALL_STATES = ("expected", "precopied")


def cmd_precopy(config: Config, args: argparse.Namespace) -> int:
    from mailmigrator.ops.logs import configure_logging

    if not require_source(config).admin_user:
        raise ConfigError("precopy needs [source] admin_user: the old server's master login reads the mail")
    require_target(config)
    if not args.all and not args.logins:
        raise ConfigError("precopy: give --all or one or more LOGINs")
    configure_logging()
    wired = open_store(config, create=True)
    assert wired is not None
    try:
        wired.views.catch_up()
        if args.all:
            found = wired.views.logins_in(ALL_STATES)
            logins = sorted(login for state in ALL_STATES for login in found[state])
        else:
            logins = [normalise_login(raw, config.migration.primary_domain) for raw in args.logins]
        migration = build_migration(config, wired.app, need_target=True)
        precopy = PreCopy(migration.migrate, config.migration.concurrency)
        progress = BatchProgress(len(logins), migration.progress, precopy)

        async def run() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(show_progress, progress.line, sys.stderr, sys.stderr.isatty())
                await precopy.run(logins)
                nursery.cancel_scope.cancel()

        trio.run(run)
        wired.views.catch_up()
    finally:
        wired.close()
    outcomes = precopy.outcomes
    by_login = {o.login: o for o in outcomes}
    ordered = [by_login[login] for login in logins]
    if ordered:
        for line in result_table(ordered):
            print(line)
    failed = sum(not o.ok for o in ordered)
    skipped = sum(o.already_done for o in ordered)
    print(f"{len(ordered) - failed - skipped} pre-copied, {skipped} skipped (not in "
          f"{'/'.join(sorted(PRECOPYABLE_STATES))}), {failed} failed")
    return EXIT_FAILED if failed else EXIT_OK
