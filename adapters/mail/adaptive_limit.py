"""How many connections one old server gets at once, adapted to how it copes (AIMD).

The limit halves (multiplicative decrease) when the server shows throttling or
overload signs, and grows by one per window of successes (additive increase),
always within [1, connections_per_source_host]. It is a `trio.CapacityLimiter`
whose `total_tokens` follows the limit, so a copier that already holds a
limiter per source host uses it unchanged; lowering the limit never takes a
token away from a connection in use, it only makes new ones wait.

All methods must be called from the trio thread (the limiter is trio's).
"""

from __future__ import annotations

import math
import re
from typing import Any

import structlog
import trio

log = structlog.get_logger("mailmigrator.adaptive_limit")

# Response codes and texts that mean "too busy, come back later", not "wrong request".
# RFC 5530 defines [UNAVAILABLE] and [LIMIT]; [THROTTLED] and "Suggested Backoff Time"
# are Exchange/Outlook wording; the "connections" texts are Dovecot's and Courier's BYEs.
_OVERLOAD_TEXTS = (
    ("[unavailable]", "unavailable"),
    ("[limit]", "limit"),
    ("[throttled]", "throttled"),
    ("suggested backoff time", "backoff requested"),
    ("maximum number of connections", "too many connections"),
    ("too many connections", "too many connections"),
    ("try again later", "try again later"),
)

_BACKOFF = re.compile(r"suggested backoff time:?\s*(\d+(?:\.\d+)?)\s*(milliseconds|millisecond|ms|seconds|second|s)?",
                      re.IGNORECASE)


def overload_sign(error: BaseException | str) -> str | None:
    """The kind of throttling or overload `error` shows, or None when it shows none."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionResetError | BrokenPipeError):
        return "connection reset"
    if isinstance(error, TimeoutError):
        return "timeout"
    text = str(error).lower()
    for needle, sign in _OVERLOAD_TEXTS:
        if needle in text:
            return sign
    if isinstance(error, BaseException) and error.__cause__ is not None:
        return overload_sign(error.__cause__)
    return None


def suggested_backoff(error: BaseException | str) -> float | None:
    """Seconds the server asked us to wait ("Suggested Backoff Time: 3000 milliseconds"), if it did."""
    found = _BACKOFF.search(str(error))
    if found is None:
        return None
    value = float(found.group(1))
    unit = (found.group(2) or "milliseconds").lower()
    return value / 1000 if unit.startswith("m") else value


class AdaptiveLimit:
    """A per-source-host connection limit that backs off under overload and recovers on success."""

    def __init__(
        self,
        host: str,
        ceiling: int,
        *,
        decrease_factor: float = 0.5,
        cooldown: float = 2.0,
        latency_factor: float = 3.0,
        latency_samples: int = 20,
        adaptive: bool = True,
        recovery_delay: float = 10.0,
    ) -> None:
        if ceiling < 1:
            raise ValueError(f"connections for {host} must be at least 1, not {ceiling}")
        self.host = host
        self.ceiling = ceiling
        # False: a fixed cap that only counts, for comparison runs.
        self.adaptive = adaptive
        self.decrease_factor = decrease_factor
        # One overload burst (all connections failing at once) should count as one decrease.
        self.cooldown = cooldown
        self.latency_factor = latency_factor
        self.latency_samples = latency_samples
        self.limiter = trio.CapacityLimiter(ceiling)
        self.decreases = 0
        self.increases = 0
        self.last_sign: str | None = None
        self._successes = 0
        self._last_decrease = -math.inf
        self._last_increase = -math.inf
        self.recovery_delay = recovery_delay
        self._backoff_until = -math.inf
        self._baseline: float | None = None
        self._recent: float | None = None
        self._samples = 0

    @property
    def current(self) -> int:
        return int(self.limiter.total_tokens)

    def snapshot(self) -> dict[str, Any]:
        """What `status` and the console show: primitives only."""
        return {
            "host": self.host,
            "limit": self.current,
            "ceiling": self.ceiling,
            "in_use": self.limiter.borrowed_tokens,
            "waiting": self.limiter.statistics().tasks_waiting,
            "decreases": self.decreases,
            "increases": self.increases,
            "last_sign": self.last_sign,
            "backoff_seconds": max(0.0, self._backoff_until - trio.current_time()),
        }

    def succeeded(self, latency: float | None = None) -> None:
        """One operation on the server went well, taking `latency` seconds (when measured)."""
        if not self.adaptive:
            return
        if latency is not None and self._latency_rose(latency):
            self._decrease("rising latency")
            return
        if trio.current_time() < self._backoff_until:
            return
        self._successes += 1
        now = trio.current_time()
        # Grow slowly: one step per cooldown, and only once the last overload is a while ago,
        # so that probing upwards does not run into the server's limit again at once.
        if (self._successes >= self.current and self.current < self.ceiling
                and now - self._last_decrease >= self.recovery_delay
                and now - self._last_increase >= self.cooldown):
            self._set(self.current + 1, "recovered")
            self._last_increase = now
            self.increases += 1

    def failed(self, error: BaseException | str) -> str | None:
        """One operation failed; backs off when the failure is an overload sign, which it returns."""
        sign = overload_sign(error)
        if sign is None or not self.adaptive:
            return sign
        wait = suggested_backoff(error)
        if wait is not None:
            self._backoff_until = max(self._backoff_until, trio.current_time() + wait)
        self._decrease(sign)
        return sign

    async def wait_backoff(self) -> None:
        """Sleep until the server's suggested backoff, if any, has passed."""
        await trio.sleep_until(max(self._backoff_until, trio.current_time()))

    def _latency_rose(self, latency: float) -> bool:
        self._samples += 1
        if self._baseline is None or self._recent is None:
            self._baseline = self._recent = latency
            return False
        self._recent = 0.7 * self._recent + 0.3 * latency
        # The baseline follows only slowly upwards, quickly downwards.
        self._baseline = min(latency, 0.98 * self._baseline + 0.02 * latency)
        if self._samples < self.latency_samples or self._baseline <= 0:
            return False
        if self._recent > self.latency_factor * self._baseline:
            # Start over from the slower level: one rise is one decrease.
            self._baseline = self._recent
            self._samples = 0
            return True
        return False

    def _decrease(self, sign: str) -> None:
        self.last_sign = sign
        self._successes = 0
        now = trio.current_time()
        if now - self._last_decrease < self.cooldown:
            return
        self._last_decrease = now
        lowered = max(1, math.floor(self.current * self.decrease_factor))
        if lowered < self.current:
            self._set(lowered, sign)
            self.decreases += 1

    def _set(self, limit: int, reason: str) -> None:
        previous = self.current
        self.limiter.total_tokens = limit
        self._successes = 0
        log.info("source connection limit changed", host=self.host, limit=limit, previous=previous, reason=reason)
