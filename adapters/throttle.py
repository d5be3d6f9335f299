"""Login throttling: failures and attempts in flight, per login and per client address.

So that the proxy cannot be used to brute-force the old server: an attempt
reserves its slot before any backend is asked, so parallel attempts count
as much as sequential ones. Once a login or an address has used its budget
(failures in the window plus attempts still running), further attempts are
refused without asking any backend until the window has moved on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class FailureWindow:
    """Failures per key within a sliding window, plus attempts in flight per key."""

    window_seconds: float
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _in_flight: dict[str, int] = field(default_factory=dict)

    def used(self, key: str) -> int:
        """Failures within the window plus attempts in flight."""
        return self.failures(key) + self._in_flight.get(key, 0)

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


@dataclass
class LoginThrottle:
    """Budgets per login (every name it goes by) and per client address, plus a cap on attempts in flight per address."""

    max_per_login: int = 5
    max_per_address: int = 20
    window_seconds: float = 300.0
    max_in_flight_per_address: int = 10
    clock: Callable[[], float] = time.monotonic
    logins: FailureWindow = field(init=False)
    addresses: FailureWindow = field(init=False)

    def __post_init__(self) -> None:
        self.logins = FailureWindow(self.window_seconds, self.clock)
        self.addresses = FailureWindow(self.window_seconds, self.clock)

    def refusal(self, logins: Iterable[str], address: str) -> str | None:
        """Why an attempt may not start now ("login", "address", "in-flight"), or None."""
        if self.addresses.in_flight(address) >= self.max_in_flight_per_address:
            return "in-flight"
        if self.addresses.used(address) >= self.max_per_address:
            return "address"
        if any(self.logins.used(key) >= self.max_per_login for key in set(logins)):
            return "login"
        return None

    def begin(self, logins: Iterable[str], address: str) -> Attempt | None:
        """Reserve a slot for an attempt under every key in `logins` from `address`; None when refused."""
        keys = tuple(dict.fromkeys(logins))
        if self.refusal(keys, address) is not None:
            return None
        for key in keys:
            self.logins.reserve(key)
        self.addresses.reserve(address)
        return Attempt(self, keys, address)
