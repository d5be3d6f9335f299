"""Login throttling: failures and attempts in flight, per login and per client address.

So that the proxy cannot be used to brute-force the old server: an attempt
reserves its slot before any backend is asked, so parallel attempts count
as much as sequential ones. While attempts still running hold the rest of a
budget, the next one waits for their outcome; once failures alone have used
a login's or an address's budget, further attempts are refused without
asking any backend until the window has moved on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio


@dataclass
class FailureWindow:
    """Failures per key within a sliding window, plus attempts in flight per key."""

    window_seconds: float
    clock: Callable[[], float] = time.monotonic
    # Keys with failures kept at most; beyond it expired ones go first, then the oldest.
    max_keys: int = 100_000
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _in_flight: dict[str, int] = field(default_factory=dict)

    def used(self, key: str) -> int:
        """Failures within the window plus attempts in flight."""
        return self.failures(key) + self._in_flight.get(key, 0)

    @property
    def tracked(self) -> int:
        """How many keys have failures kept."""
        return len(self._failures)

    def in_flight(self, key: str) -> int:
        return self._in_flight.get(key, 0)

    def failures(self, key: str) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        cutoff = self.clock() - self.window_seconds
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        return len(times)

    def reserve(self, key: str) -> None:
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def end(self, key: str, failed: bool) -> None:
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)
        if failed:
            self._failures.setdefault(key, deque()).append(self.clock())
            if len(self._failures) > self.max_keys:
                self._prune()

    def _prune(self) -> None:
        cutoff = self.clock() - self.window_seconds
        for key in [k for k, times in self._failures.items() if times[-1] <= cutoff]:
            del self._failures[key]
        while len(self._failures) > self.max_keys:
            del self._failures[next(iter(self._failures))]

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)


class Attempt:
    """One reserved login attempt; end it exactly once with `failed`, `succeeded` or `release`."""

    def __init__(self, throttle: LoginThrottle, logins: tuple[str, ...], address: str) -> None:
        self._throttle = throttle
        self._logins = logins
        self._address = address
        self._open = True

    def failed(self) -> None:
        """A wrong password: the slot stays taken as a failure, for every key and the address."""
        self._end(failed=True)

    def succeeded(self) -> None:
        """A right password: the slot is freed and the logins' earlier failures are forgiven."""
        if self._open:
            for key in self._logins:
                self._throttle.logins.clear(key)
        self._end(failed=False)

    def release(self) -> None:
        """Neither (the backend was unavailable, the client went away): the slot is freed uncounted."""
        self._end(failed=False)

    def _end(self, failed: bool) -> None:
        if not self._open:
            return
        self._open = False
        for key in self._logins:
            self._throttle.logins.end(key, failed)
        self._throttle.addresses.end(self._address, failed)
        self._throttle._attempt_ended()


@dataclass
class LoginThrottle:
    """Budgets per login (every name it goes by) and per client address, plus a cap on attempts in flight per address."""

    max_per_login: int = 5
    max_per_address: int = 20
    window_seconds: float = 300.0
    max_in_flight_per_address: int = 10
    max_wait_seconds: float = 30.0
    clock: Callable[[], float] = time.monotonic
    logins: FailureWindow = field(init=False)
    addresses: FailureWindow = field(init=False)
    _ended: trio.Event = field(init=False)

    def __post_init__(self) -> None:
        self.logins = FailureWindow(self.window_seconds, self.clock)
        self.addresses = FailureWindow(self.window_seconds, self.clock)
        self._ended = trio.Event()

    def refusal(self, logins: Iterable[str], address: str) -> str | None:
        """Why an attempt may not start: "login" or "address" (failures used the budget), None when it may."""
        if self.addresses.failures(address) >= self.max_per_address:
            return "address"
        if any(self.logins.failures(key) >= self.max_per_login for key in set(logins)):
            return "login"
        return None

    def _full(self, logins: tuple[str, ...], address: str) -> bool:
        """Whether attempts still running hold the rest of a budget (their outcome decides)."""
        return (
            self.addresses.in_flight(address) >= self.max_in_flight_per_address
            or self.addresses.used(address) >= self.max_per_address
            or any(self.logins.used(key) >= self.max_per_login for key in logins)
        )

    async def begin(self, logins: Iterable[str], address: str) -> Attempt | str:
        """Reserve a slot for an attempt under every key in `logins` from `address`, or say why not.

        While attempts in flight hold the budget, wait (at most `max_wait_seconds`)
        for them to end: a right password frees its slot, a wrong one keeps it.
        The answer is an `Attempt`, or "login" / "address" / "in-flight".
        """
        keys = tuple(dict.fromkeys(logins))
        with trio.move_on_after(self.max_wait_seconds):
            while True:
                refused = self.refusal(keys, address)
                if refused is not None:
                    return refused
                if not self._full(keys, address):
                    for key in keys:
                        self.logins.reserve(key)
                    self.addresses.reserve(address)
                    return Attempt(self, keys, address)
                await self._ended.wait()
        return "in-flight"

    def _attempt_ended(self) -> None:
        self._ended.set()
        self._ended = trio.Event()
