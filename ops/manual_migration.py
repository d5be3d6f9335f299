"""`mailmigrator migrate`: the Manual tab on the command line, one user or a bulk file.

Both go through the `MigrateAccount` use case, `concurrency` accounts at a time. On a
terminal a progress line is redrawn in place; otherwise a line is printed
every few seconds (for logs and CI). Passwords come from stdin, a no-echo
prompt or the bulk file, and are never printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO

import trio

from mailmigrator.domain.logins import normalise_login
from mailmigrator.ops.bulk import BulkEntry, BulkProblem, parse_bulk
from mailmigrator.ops.config import Config, ConfigError
from mailmigrator.adapters.mail.copier import CopyProgress
from mailmigrator.domain.use_cases.bulk import MigrateMany
from mailmigrator.domain.use_cases.migrate_account import MigrateAccount, MigrationOutcome
from mailmigrator.ops.composition import build_migration
from mailmigrator.ops.composition import open_store
from mailmigrator.projections.log import human_bytes

EXIT_OK, EXIT_FAILED = 0, 1
TTY_REFRESH = 0.5
PLAIN_REFRESH = 5.0


class Counted(Protocol):
    """A batch's finished and failed counts (`MigrateMany`, `PreCopy`)."""

    done: int
    failed: int


@dataclass
class BatchProgress:
    """Accounts done out of how many, over the copy engine's message and byte counters."""

    accounts: int
    progress_of: CopyProgress
    many: Counted
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        p, done, failed_count = self.progress_of, self.many.done, self.many.failed
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = p.bytes / elapsed
        left = max(p.total_bytes - p.bytes, 0)
        eta = f"{int(left / rate) // 60}:{int(left / rate) % 60:02d}" if rate > 0 and p.total_bytes else "?"
        failed = f" ({failed_count} failed)" if failed_count else ""
        return (
            f"accounts {done}/{self.accounts}{failed}, {p.messages:,}/{p.total_messages:,} messages, "
            f"{p.bytes / 1e6:,.1f}/{p.total_bytes / 1e6:,.1f} MB, {p.messages / elapsed:,.0f} msg/s, "
            f"{rate / 1e6:,.1f} MB/s, ETA {eta}"
        )


async def show_progress(line: Callable[[], str], out: TextIO, tty: bool) -> None:
    """Redraw `line()` in place on a terminal, else print it every few seconds; until cancelled."""
    try:
        while True:
            await trio.sleep(TTY_REFRESH if tty else PLAIN_REFRESH)
            if tty:
                print(f"\r\x1b[K{line()}", end="", file=out, flush=True)
            else:
                print(f"progress: {line()}", file=out, flush=True)
    finally:
        if tty:
            print(f"\r\x1b[K{line()}", file=out, flush=True)


async def migrate_entries(
    migrate: MigrateAccount, progress_of: CopyProgress, entries: Sequence[BulkEntry], concurrency: int, *,
    typed: str | None = None, out: TextIO | None = None,
) -> list[MigrationOutcome]:
    """Migrate every entry, `concurrency` at a time, with a progress line; outcomes in the entries' order."""
    out = out or sys.stderr
    many = MigrateMany(migrate, concurrency)
    progress = BatchProgress(len(entries), progress_of, many)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(show_progress, progress.line, out, out.isatty())
        outcomes = await many.run(entries, typed=typed)
        nursery.cancel_scope.cancel()
    return outcomes


def result_table(outcomes: Sequence[MigrationOutcome]) -> list[str]:
    """One line per account: login, result, counts, and what happened in words."""
    width = max([len("LOGIN")] + [len(o.login) for o in outcomes])
    lines = [f"{'LOGIN':{width}}  {'RESULT':6}  {'MESSAGES':>9}  {'SIZE':>10}  DETAIL"]
    for o in outcomes:
        r = o.result
        messages = f"{r.messages:,}" if r is not None and r.ok else "-"
        size = human_bytes(r.bytes) if r is not None and r.ok else "-"
        detail = o.message
        if o.post_script is not None and (o.post_script.exit_status != 0 or o.post_script.timed_out):
            detail += "; post-migrate script " + ("timed out" if o.post_script.timed_out
                                                  else f"exited {o.post_script.exit_status}")
        lines.append(f"{o.login:{width}}  {'ok' if o.ok else 'FAILED':6}  {messages:>9}  {size:>10}  {detail}")
    return lines


def read_old_password(args: argparse.Namespace, login: str) -> str:
    """The user's old-server password: one line of stdin with --password-stdin, else a no-echo prompt."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        password = getpass.getpass(f"password of {login} on the old server: ")
    if not password:
        raise ConfigError("empty password; give the user's password on the old server")
    return password


def cmd_migrate(config: Config, args: argparse.Namespace) -> int:
    """`migrate --user LOGIN` or `migrate --bulk FILE`."""
    from mailmigrator.ops.logs import configure_logging

    configure_logging()
    domain = args.domain or config.migration.primary_domain
    problems: list[BulkProblem] = []
    typed: str | None = None
    if args.bulk is not None:
        try:
            text = args.bulk.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"--bulk {args.bulk}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--bulk {args.bulk} is not UTF-8 text") from None
        entries, problems = parse_bulk(text, domain)
        for problem in problems:
            print(f"{args.bulk}: {problem} (skipped)", file=sys.stderr)
    else:
        login = normalise_login(args.user, domain)
        entries = [BulkEntry(0, login, read_old_password(args, login))]
        typed = args.user
    wired = open_store(config, create=True)
    assert wired is not None
    try:
        migration = build_migration(config, wired.app, need_target=False)
        outcomes = trio.run(lambda: migrate_entries(migration.migrate, migration.progress, entries,
                                                    config.migration.concurrency, typed=typed))
        wired.views.catch_up()
    finally:
        entries.clear()
        wired.close()
    if args.bulk is None:
        return _single_result(outcomes[0])
    for line in result_table(outcomes):
        print(line)
    failed = sum(not o.ok for o in outcomes)
    print(f"{len(outcomes) - failed} migrated, {failed} failed, {len(problems)} bad line(s) skipped")
    return EXIT_FAILED if failed or problems else EXIT_OK


def _single_result(outcome: MigrationOutcome) -> int:
    login = outcome.login
    if not outcome.ok:
        print(f"mailmigrator: {login}: {outcome.message}", file=sys.stderr)
        return EXIT_FAILED
    result = outcome.result
    if outcome.already_done or result is None:
        print(f"{login}: {outcome.message}")
        return EXIT_OK
    skipped = f", {result.skipped} skipped (see `mailmigrator show {login}`)" if result.skipped else ""
    print(f"{login}: migrated {result.folders} folders, {result.messages:,} messages, "
          f"{human_bytes(result.bytes)}{skipped}")
    script = outcome.post_script
    if script is not None and (script.exit_status != 0 or script.timed_out):
        print(f"{login}: post-migrate script {'timed out' if script.timed_out else f'exited {script.exit_status}'}"
              " (the migration stands; see the log)")
    return EXIT_OK
