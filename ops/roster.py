"""The roster file: the accounts the run is expected to move.

One login a line, or the bulk file's `user:password[:alias]` lines, of which only
the login is read: the password is dropped on reading. Blank lines and `#`
comments are ignored.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from mailmigrator.domain.errors import InvalidLogin
from mailmigrator.domain.logins import normalise_login
from mailmigrator.ops.composition import open_store
from mailmigrator.ops.config import Config

EXIT_OK, EXIT_USAGE = 0, 2


@dataclass(frozen=True)
class RosterProblem:
    line: int
    reason: str


def parse_roster(text: str, primary_domain: str) -> tuple[list[str], list[RosterProblem]]:
    """The roster's logins in file order without repeats, and the problems of its bad lines."""
    logins: dict[str, None] = {}
    problems: list[RosterProblem] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user = line.partition(":")[0].strip()
        if not user:
            problems.append(RosterProblem(number, "empty user name"))
            continue
        if any(c.isspace() for c in user):
            problems.append(RosterProblem(number, f"a login has no spaces: {user!r}"))
            continue
        try:
            logins[normalise_login(user, primary_domain)] = None
        except InvalidLogin as e:
            problems.append(RosterProblem(number, str(e)))
    return list(logins), problems


def cmd_roster_import(config: Config, args: argparse.Namespace) -> int:
    """Validate the whole file, then record the roster; nothing is recorded when a line is bad."""
    path: Path = args.file
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"mailmigrator: {path}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return EXIT_USAGE
    logins, problems = parse_roster(text, config.migration.primary_domain)
    if problems:
        for problem in problems:
            print(f"{path}: line {problem.line}: {problem.reason}", file=sys.stderr)
        print(f"mailmigrator: {len(problems)} bad line(s) in {path}; nothing imported", file=sys.stderr)
        return EXIT_USAGE
    wired = open_store(config, create=True)
    assert wired is not None
    try:
        source = f"roster import {path.name}"
        added = wired.app.record_expected(logins, source)
        removed: list[str] = []
        if args.replace:
            wired.views.catch_up()
            keep = set(logins)
            for login in sorted(wired.views.roster_logins() - keep):
                wired.app.record_removed_from_roster(login, source)
                removed.append(login)
        wired.views.catch_up()
    finally:
        wired.close()
    print(f"roster {path}: {len(added)} added, {len(logins) - len(added)} already on the roster, "
          f"{len(removed)} removed")
    return EXIT_OK
