"""The adaptive per-source-host connection limit: AIMD, backoff hints, latency, the limiter it drives."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from mailmigrator.adapters.mail.adaptive_limit import AdaptiveLimit, overload_sign, suggested_backoff

UNAVAILABLE = "NO [UNAVAILABLE] Server busy, try again later"


@pytest.mark.parametrize(
    ("error", "sign"),
    [
        (UNAVAILABLE, "unavailable"),
        ("NO [LIMIT] Too many commands", "limit"),
        ("NO [THROTTLED] Request is throttled. Suggested Backoff Time: 3039 milliseconds", "throttled"),
        ("* BYE Maximum number of connections from user+IP exceeded (mail_max_userip_connections=10)",
         "too many connections"),
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (ConnectionResetError(104, "Connection reset by peer"), "connection reset"),
        (TimeoutError("timed out"), "timeout"),
        ("NO [AUTHENTICATIONFAILED] Authentication failed.", None),
        ("BAD Error in IMAP command", None),
        (ValueError("not a number"), None),
    ],
)
def test_overload_signs(error: BaseException | str, sign: str | None) -> None:
    assert overload_sign(error) == sign


def test_overload_sign_found_in_the_cause() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError as inner:
            raise RuntimeError("planning failed") from inner
    except RuntimeError as outer:
        assert overload_sign(outer) == "connection refused"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("Suggested Backoff Time: 3039 milliseconds", 3.039), ("suggested backoff time: 2 seconds", 2.0),
     ("Suggested Backoff Time: 500", 0.5), ("NO [UNAVAILABLE] busy", None)],
)
def test_suggested_backoff(text: str, seconds: float | None) -> None:
    assert suggested_backoff(text) == pytest.approx(seconds) if seconds else suggested_backoff(text) is None


async def test_overload_halves_once_per_burst_down_to_one(autojump_clock: trio.testing.MockClock) -> None:
    limit = AdaptiveLimit("old.example", 8, cooldown=2.0)
    assert limit.failed(UNAVAILABLE) == "unavailable"
    assert limit.current == 4
    limit.failed(ConnectionRefusedError())
    assert limit.current == 4, "a burst of failures within the cooldown is one decrease"
    for expected in (2, 1, 1):
        await trio.sleep(2.0)
        limit.failed(UNAVAILABLE)
        assert limit.current == expected
    assert limit.limiter.total_tokens == 1 and limit.decreases == 3


async def test_success_grows_by_one_per_window_up_to_the_ceiling(autojump_clock: trio.testing.MockClock) -> None:
    limit = AdaptiveLimit("old.example", 4, cooldown=2.0, recovery_delay=10.0)
    limit.failed(UNAVAILABLE)
    assert limit.current == 2
    for _ in range(10):
        limit.succeeded()
    assert limit.current == 2, "no growth while the overload is recent"
    await trio.sleep(10)
    limit.succeeded()
    assert limit.current == 3, "the successes meanwhile count once the overload is old enough"
    for _ in range(10):
        limit.succeeded()
    assert limit.current == 3, "at most one step per cooldown"
    await trio.sleep(2)
    for _ in range(3):
        limit.succeeded()
    assert limit.current == 4
    await trio.sleep(60)
    for _ in range(20):
        limit.succeeded()
    assert limit.current == 4 and limit.increases == 2


async def test_non_overload_failures_leave_the_limit_alone(autojump_clock: trio.testing.MockClock) -> None:
    limit = AdaptiveLimit("old.example", 4)
    assert limit.failed("NO [AUTHENTICATIONFAILED] Authentication failed.") is None
    assert limit.current == 4 and limit.decreases == 0


async def test_suggested_backoff_holds_growth_and_waits(autojump_clock: trio.testing.MockClock) -> None:
    limit = AdaptiveLimit("old.example", 4)
    limit.failed("NO [THROTTLED] Suggested Backoff Time: 3000 milliseconds")
    assert limit.current == 2
    for _ in range(10):
        limit.succeeded()
    assert limit.current == 2, "no growth during the server's backoff"
    assert limit.snapshot()["backoff_seconds"] == pytest.approx(3.0)
    started = trio.current_time()
    await limit.wait_backoff()
    assert trio.current_time() - started == pytest.approx(3.0)
    await trio.sleep(limit.recovery_delay)
    limit.succeeded()
    limit.succeeded()
    assert limit.current == 3


async def test_rising_latency_backs_off(autojump_clock: trio.testing.MockClock) -> None:
    limit = AdaptiveLimit("old.example", 8, latency_samples=10)
    for _ in range(30):
        limit.succeeded(0.010)
    assert limit.current == 8
    slow = 0
    while limit.current == 8 and slow < 5:
        limit.succeeded(0.200)
        slow += 1
    assert limit.current == 4 and limit.last_sign == "rising latency"


async def test_lowered_limit_bounds_simultaneous_holders(autojump_clock: trio.testing.MockClock) -> None:
    limit = AdaptiveLimit("old.example", 8)
    limit.failed(UNAVAILABLE)
    limit.failed(UNAVAILABLE)  # within the cooldown: still 4
    await trio.sleep(3)
    limit.failed(UNAVAILABLE)
    assert limit.current == 2
    holding = 0
    most = 0

    async def connection() -> None:
        nonlocal holding, most
        async with limit.limiter:
            holding += 1
            most = max(most, holding)
            await trio.sleep(1)
            holding -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(connection)
    assert most == 2


async def test_lowering_below_tokens_in_use_takes_none_away(autojump_clock: trio.testing.MockClock) -> None:
    limit = AdaptiveLimit("old.example", 4)
    release = trio.Event()
    entered = 0

    async def hold() -> None:
        nonlocal entered
        async with limit.limiter:
            entered += 1
            await release.wait()

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(hold)
        await trio.testing.wait_all_tasks_blocked()
        limit.failed(UNAVAILABLE)
        assert (limit.current, limit.snapshot()["in_use"], entered) == (2, 4, 4)
        nursery.start_soon(hold)
        await trio.testing.wait_all_tasks_blocked()
        assert entered == 4 and limit.snapshot()["waiting"] == 1
        release.set()
    assert entered == 5
