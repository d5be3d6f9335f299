"""Login failure throttling, per login and per client address.

So that the proxy cannot be used to brute-force the old server: once a login
or an address has failed too often within the window, further attempts are
refused without asking any backend until the window has moved on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoginThrottle:
    """Counts failed logins in a sliding window; `allowed` says whether to try one more."""

    max_per_login: int = 5
    max_per_address: int = 20
    window_seconds: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _by_login: dict[str, deque[float]] = field(default_factory=dict)
    _by_address: dict[str, deque[float]] = field(default_factory=dict)

    def allowed(self, login: str, address: str) -> bool:
        """Whether a login attempt for `login` from `address` may go ahead now."""
        now = self.clock()
        return (
            self._count(self._by_login, login, now) < self.max_per_login
            and self._count(self._by_address, address, now) < self.max_per_address
        )

    def failed(self, login: str, address: str) -> None:
        """Record one failed attempt."""
        now = self.clock()
        for table, key in ((self._by_login, login), (self._by_address, address)):
            table.setdefault(key, deque()).append(now)

    def succeeded(self, login: str) -> None:
        """A right password clears the login's failures (not the address's)."""
        self._by_login.pop(login, None)

    def _count(self, table: dict[str, deque[float]], key: str, now: float) -> int:
        times = table.get(key)
        if times is None:
            return 0
        while times and times[0] <= now - self.window_seconds:
            times.popleft()
        if not times:
            del table[key]
            return 0
        return len(times)
