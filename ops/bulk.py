"""The bulk migration file: lines `user:pass` or `user:pass:alias@domain`.

Blank lines and `#` comments are ignored; a bad line is reported with its
number and skipped, the rest goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailmigrator.domain.aliases import is_strict_address
from mailmigrator.domain.errors import InvalidLogin
from mailmigrator.domain.logins import normalise_login


@dataclass(frozen=True)
class BulkEntry:
    line: int
    login: str
    password: str = field(repr=False)
    alias: str | None = None


@dataclass(frozen=True)
class BulkProblem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def parse_bulk(text: str, primary_domain: str) -> tuple[list[BulkEntry], list[BulkProblem]]:
    """The entries of a bulk file and the problems of its bad lines (never a password in a problem)."""
    entries: list[BulkEntry] = []
    problems: list[BulkProblem] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, rest = line.partition(":")
        if not sep:
            problems.append(BulkProblem(number, "no password: write user:password"))
            continue
        # The password may itself contain ':'; an alias is recognised only as a final `:x@y` part.
        password, alias = rest, None
        head, colon, tail = rest.rpartition(":")
        if colon and "@" in tail and " " not in tail:
            password, alias = head, tail.strip().lower()
        if not user.strip():
            problems.append(BulkProblem(number, "empty user name"))
            continue
        if not password:
            problems.append(BulkProblem(number, f"no password for {user.strip()!r}"))
            continue
        try:
            login = normalise_login(user, primary_domain)
        except InvalidLogin as e:
            problems.append(BulkProblem(number, str(e)))
            continue
        if alias is not None and not is_strict_address(alias):
            problems.append(BulkProblem(number, "bad alias: write a plain alias@domain (ASCII, no spaces)"))
            continue
        if login in seen:
            problems.append(BulkProblem(number, f"{login} already given on line {seen[login]}"))
            continue
        seen[login] = number
        entries.append(BulkEntry(number, login, password, alias))
    return entries, problems
