"""Retry policies as data, and running a step under one: attempts counted, waits doubling, the predicate obeyed."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from mailmigrator.adapters.retries import retrying
from mailmigrator.domain.retries import CONNECTION_RETRIES, MIGRATION_RETRIES, RetryPolicy


class Flaky(Exception):
    """A failure worth another try."""


class Final(Exception):
    """A failure no retry mends."""


def is_flaky(error: Exception) -> bool:
    return isinstance(error, Flaky)


async def attempt_times(policy: RetryPolicy, failures: Sequence[Exception]) -> tuple[list[float], Exception | None]:
    """Run a step that raises `failures` one per attempt, then succeeds; when each attempt began, what escaped."""
    pending = list(failures)
    started: list[float] = []
    try:
        async for attempt in retrying(policy, on=is_flaky):
            with attempt:
                assert attempt.num == len(started) + 1
                started.append(trio.current_time())
                if pending:
                    raise pending.pop(0)
    except Exception as e:  # noqa: BLE001 - the test inspects what escaped
        return started, e
    return started, None


def test_named_policies() -> None:
    assert MIGRATION_RETRIES == RetryPolicy(attempts=10, first_wait=5.0, max_wait=600.0)
    assert CONNECTION_RETRIES.attempts > 1 and CONNECTION_RETRIES.first_wait <= CONNECTION_RETRIES.max_wait


@pytest.mark.parametrize(
    ("attempts", "first_wait", "max_wait", "timeout"),
    [(0, 1.0, 2.0, None), (3, -1.0, 2.0, None), (3, 3.0, 2.0, None), (3, 1.0, 2.0, 0.0)],
)
def test_a_policy_that_cannot_work_is_refused(
    attempts: int, first_wait: float, max_wait: float, timeout: float | None
) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts, first_wait, max_wait, timeout)


async def test_every_attempt_fails_then_the_last_failure_escapes(autojump_clock: trio.testing.MockClock) -> None:
    policy = RetryPolicy(attempts=6, first_wait=5.0, max_wait=30.0)
    last = Flaky("sixth")
    started, escaped = await attempt_times(policy, [Flaky("again") for _ in range(5)] + [last, Flaky("never")])
    assert escaped is last
    assert len(started) == 6
    waits = [later - earlier for earlier, later in zip(started, started[1:])]
    assert waits == pytest.approx([5.0, 10.0, 20.0, 30.0, 30.0])


async def test_a_success_ends_the_retries(autojump_clock: trio.testing.MockClock) -> None:
    started, escaped = await attempt_times(RetryPolicy(5, 1.0, 1.0), [Flaky("one"), Flaky("two")])
    assert escaped is None
    assert len(started) == 3


async def test_a_failure_the_predicate_refuses_is_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    final = Final("no")
    started, escaped = await attempt_times(RetryPolicy(5, 1.0, 1.0), [Flaky("once"), final])
    assert escaped is final
    assert len(started) == 2


async def test_no_attempt_starts_after_the_timeout() -> None:
    # stamina measures the timeout on the system's monotonic clock, so this one runs in real time.
    policy = RetryPolicy(attempts=1000, first_wait=0.01, max_wait=0.01, timeout=0.2)
    started, escaped = await attempt_times(policy, [Flaky(str(i)) for i in range(1000)])
    assert isinstance(escaped, Flaky)
    assert 2 <= len(started) < 1000
    assert started[-1] - started[0] < 1.0
