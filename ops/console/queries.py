"""What the console shows, read from the same views and service the CLI uses.

Every method here blocks (store calls); the HTTP layer runs them in a worker
thread. Nothing is stored here but a cache of the last read, keyed by the
views' tracking position, and recent totals for the copy rate.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailmigrator.domain.states import ACCOUNT_STATES, OFF_ROSTER_STATES, SETTLED_STATES
from mailmigrator.ops.config import Config
from mailmigrator.ops.composition import OpenStore
from mailmigrator.projections.accounts import (
    AccountDoc,
    AccountRow,
    EventRow,
    RunDoc,
    StateTotals,
    event_row,
    roster_progress,
)

RATE_WINDOW_SECONDS = 300.0
MAX_PAGE = 500


@dataclass(frozen=True)
class Snapshot:
    """The run document and the accounts' counts and sums by state at one tracking position."""

    position: int
    run: RunDoc
    totals: list[StateTotals]


@dataclass
class RateMeter:
    """Copy rate over the last few minutes, from successive totals."""

    window_seconds: float = RATE_WINDOW_SECONDS
    clock: Callable[[], float] = time.monotonic
    _samples: deque[tuple[float, int, int]] = field(default_factory=deque)

    def add(self, messages: int, bytes_: int) -> None:
        now = self.clock()
        if self._samples and (messages < self._samples[-1][1] or bytes_ < self._samples[-1][2]):
            self._samples.clear()  # totals went down: the views were replayed
        self._samples.append((now, messages, bytes_))
        while len(self._samples) > 2 and self._samples[0][0] < now - self.window_seconds:
            self._samples.popleft()

    def rates(self) -> tuple[float, float]:
        """(messages per second, bytes per second); zero until two samples differ in time."""
        if len(self._samples) < 2:
            return 0.0, 0.0
        (t0, m0, b0), (t1, m1, b1) = self._samples[0], self._samples[-1]
        if t1 - t0 < 1.0:
            return 0.0, 0.0
        return (m1 - m0) / (t1 - t0), (b1 - b0) / (t1 - t0)


class BadQuery(ValueError):
    """A query parameter is wrong; the message names it and what to send instead."""


@dataclass(frozen=True)
class AccountQuery:
    state: str | None = None
    search: str = ""
    offset: int = 0
    limit: int = 50

    @classmethod
    def parse(cls, params: dict[str, str]) -> AccountQuery:
        state = params.get("state") or None
        if state is not None and state not in ACCOUNT_STATES:
            raise BadQuery(f"state={state!r} is not an account state; use one of: {', '.join(ACCOUNT_STATES)}")
        offset = _whole_number(params, "offset", 0, minimum=0)
        limit = _whole_number(params, "limit", 50, minimum=1)
        if limit > MAX_PAGE:
            raise BadQuery(f"limit={limit} is too large; ask for at most {MAX_PAGE} accounts per page")
        return cls(state, params.get("q", "").strip().lower(), offset, limit)


def _whole_number(params: dict[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise BadQuery(f"{name}={raw!r} is not a whole number; send {name} as digits, e.g. {name}={default}")
    value = int(raw)
    if value < minimum:
        raise BadQuery(f"{name}={value} is too small; it must be at least {minimum}")
    return value


class ConsoleQueries:
    """The console's read side over one `OpenStore` store."""

    def __init__(self, config: Config, wired: OpenStore, rate: RateMeter | None = None) -> None:
        self.config = config
        self.wired = wired
        self.rate = rate or RateMeter()
        self._cached: Snapshot | None = None

    def snapshot(self) -> Snapshot:
        """The views brought up to date, then read (re-read only when the position moved)."""
        views = self.wired.views
        views.catch_up()
        position = views.store.position()
        if self._cached is None or self._cached.position != position:
            self._cached = Snapshot(position, views.run_status(), views.state_totals())
        messages = sum(t["messages"] for t in self._cached.totals)
        bytes_ = sum(t["bytes"] for t in self._cached.totals)
        self.rate.add(messages, bytes_)
        return self._cached

    def general(self) -> dict[str, Any]:
        """The effective settings of the General tab (no secret is among them)."""
        return self.config.general_settings()

    def run(self) -> dict[str, Any]:
        snap = self.snapshot()
        return {
            "state": snap.run["state"],
            "updated_at": snap.run.get("updated_at"),
            "finished_at": snap.run.get("finished_at"),
            "counts": state_counts(snap.totals),
            "progress": self._progress(snap.totals),
            "roster": roster_progress(snap.totals),
        }

    def _progress(self, totals: list[StateTotals]) -> dict[str, Any]:
        totals = [t for t in totals if t["state"] not in OFF_ROSTER_STATES]
        messages = sum(t["messages"] for t in totals)
        bytes_ = sum(t["bytes"] for t in totals)
        planned_bytes = sum(t["planned_bytes"] for t in totals)
        planned_messages = sum(t["planned_messages"] for t in totals)
        message_rate, byte_rate = self.rate.rates()
        left = max(planned_bytes - bytes_, 0)
        eta = round(left / byte_rate) if byte_rate > 0 and left else (0 if not left else None)
        return {
            "accounts_total": sum(t["accounts"] for t in totals),
            "accounts_done": sum(t["accounts"] for t in totals if t["state"] in SETTLED_STATES),
            "accounts_failed": sum(t["accounts"] for t in totals if t["state"] == "failed"),
            "messages_done": messages,
            "messages_planned": planned_messages,
            "bytes_done": bytes_,
            "bytes_planned": planned_bytes,
            "messages_per_second": round(message_rate, 2),
            "bytes_per_second": round(byte_rate, 1),
            "eta_seconds": eta,
        }

    def accounts(self, query: AccountQuery) -> dict[str, Any]:
        snap = self.snapshot()
        views = self.wired.views
        page = views.account_rows(query.state, query.search, query.offset, query.limit)
        return {
            "total": views.account_count(query.state, query.search),
            "offset": query.offset,
            "limit": query.limit,
            "counts": state_counts(snap.totals),
            "accounts": [account_row(row) for row in page],
        }

    def account(self, login: str) -> AccountDoc | None:
        self.wired.views.catch_up()
        return self.wired.views.account(login)

    def report(self, fmt: str) -> str:
        """The sign-off report as `mailmigrator report` writes it."""
        from mailmigrator.ops.report import render, report_rows

        self.wired.views.catch_up()
        return render(report_rows(self.wired.views.accounts()), fmt)

    def history(self, login: str) -> list[EventRow]:
        """Every event of the account, oldest first; `AccountNotFound` when none."""
        return [event_row(event) for event in self.wired.app.history(login)]

    def log(self, after: int | None, tail: int, limit: int) -> dict[str, Any]:
        """At most `limit` log lines after line number `after`, or the last `tail` lines when `after` is None."""
        views = self.wired.views
        views.catch_up()
        if after is None:
            after, limit = max(views.store.log_count() - tail, 0), tail
        lines = views.store.log_lines(after=after, limit=limit)
        return {"after": after, "next": after + len(lines), "lines": lines}

    def press(self, button: str, by: str) -> dict[str, Any]:
        """Record a Start / Stop / Finish press, exactly as the CLI does."""
        app = self.wired.app
        app.configure_run(self.config.general_settings())
        action = {"start": app.start_run, "stop": app.stop_run, "finish": app.request_finish}[button]
        changed = action(by)
        self.wired.views.catch_up()
        return {"changed": changed, "state": self.wired.views.run_status()["state"]}


def state_counts(totals: list[StateTotals]) -> dict[str, int]:
    counts = {state: 0 for state in ACCOUNT_STATES}
    for t in totals:
        counts[t["state"]] = t["accounts"]
    return counts


def account_row(doc: AccountRow) -> dict[str, Any]:
    """One line of the accounts table."""
    return {
        "login": doc["login"],
        "state": doc["state"],
        "locked": doc["locked"],
        "folders": doc["folders"],
        "messages": doc["messages"],
        "bytes": doc["bytes"],
        "planned_bytes": doc["planned_bytes"],
        "started_at": doc["started_at"],
        "completed_at": doc["completed_at"],
        "error": doc["error"],
        "updated_at": doc["updated_at"],
    }
