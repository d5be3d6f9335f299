"""How often, and how patiently, a failed step is tried again: retry policies as plain data.

A policy says nothing about which failures are worth another try; the caller
decides that for each failure. Waiting and counting happen in the adapter that
runs the step (`mailmigrator.adapters.retries`), so no clock is read here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """At most `attempts` tries; `first_wait` seconds after the first failure, doubling up to `max_wait`.

    `timeout`, when set, bounds the seconds from the first try after which no new try starts.
    """

    attempts: int
    first_wait: float
    max_wait: float
    timeout: float | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"a retry policy needs at least one attempt, not {self.attempts}")
        if not 0 <= self.first_wait <= self.max_wait:
            raise ValueError(f"waits must satisfy 0 <= first_wait ({self.first_wait}) <= max_wait ({self.max_wait})")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"a retry timeout must be positive, not {self.timeout}")


# One connection of the copier dropped, timed out or was refused as overloaded: reconnect soon, a few times.
CONNECTION_RETRIES = RetryPolicy(attempts=5, first_wait=0.5, max_wait=30.0)

# A whole account's migration failed in the background: try it again over about half an hour
# (waits of 5 s, 10 s, 20 s, ... capped at 10 minutes), long enough to outlast a restart of either server.
MIGRATION_RETRIES = RetryPolicy(attempts=10, first_wait=5.0, max_wait=600.0)
