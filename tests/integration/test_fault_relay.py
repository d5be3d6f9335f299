"""The fault-injecting relay in front of the real old Dovecot, and the adaptive limit against it."""

from __future__ import annotations

import contextlib
import imaplib
import socket
import time
from collections.abc import Callable

import pytest
import trio
from imapclient import IMAPClient

from mailmigrator.adapters.mail.adaptive_limit import AdaptiveLimit, overload_sign
import testbed
from copy_testbed import new_user
from fault_relay import FaultRelay, Overflow


def login_through(relay: FaultRelay, login: str, password: str) -> IMAPClient:
    return testbed.open_imap("127.0.0.1", relay.port, login, password, timeout=10)


@pytest.mark.parametrize("overflow", ["reset", "bye", "unavailable"])
def test_relay_serves_up_to_the_limit_then_refuses_like_an_overloaded_server(
    old_server: testbed.DovecotServer, overflow: Overflow
) -> None:
    login, password = new_user(old_server, None)
    assert old_server.imap_port is not None
    with FaultRelay(("127.0.0.1", old_server.imap_port), max_connections=2, overflow=overflow) as relay:
        first, second = login_through(relay, login, password), login_through(relay, login, password)
        assert first.select_folder("INBOX")[b"EXISTS"] == second.select_folder("INBOX")[b"EXISTS"]
        with pytest.raises(Exception) as refused:
            login_through(relay, login, password)
        sign = overload_sign(refused.value)
        expected = {"reset": {"connection reset", None}, "bye": {"too many connections"}, "unavailable": {"unavailable"}}
        assert sign in expected[overflow], f"{type(refused.value).__name__}: {refused.value}"
        if overflow == "reset":
            # An RST may surface as a reset or as an EOF before the greeting.
            assert isinstance(refused.value, (ConnectionResetError, imaplib.IMAP4.abort, socket.error, EOFError))
        first.logout()
        _wait(lambda: relay.open_connections == 1)
        third = login_through(relay, login, password)
        assert third.noop() is not None
        third.logout()
        second.logout()
        assert (relay.peak, relay.refused) == (2, 1)


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


async def _sessions(relay: FaultRelay, login: str, password: str, limiter: trio.CapacityLimiter,
                    limit: AdaptiveLimit | None, jobs: int, workers: int) -> int:
    """Run `jobs` login+select+logout sessions through the relay; returns how many attempts failed."""
    errors = 0
    queue_send, queue_receive = trio.open_memory_channel[int](jobs)
    for n in range(jobs):
        queue_send.send_nowait(n)
    queue_send.close()

    def session() -> None:
        client = login_through(relay, login, password)
        try:
            client.select_folder("INBOX", readonly=True)
            time.sleep(0.05)  # held a little, as a folder copy would
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    async def worker() -> None:
        nonlocal errors
        async for _ in queue_receive.clone():
            while True:
                async with limiter:
                    started = trio.current_time()
                    try:
                        await trio.to_thread.run_sync(session)
                    except Exception as e:  # noqa: BLE001 - counted, then retried
                        errors += 1
                        if limit is not None:
                            limit.failed(e)
                        failed = True
                    else:
                        if limit is not None:
                            limit.succeeded(trio.current_time() - started)
                        failed = False
                if not failed:
                    break
                await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)
    return errors


async def test_adaptive_limit_meets_fewer_refusals_than_a_fixed_one(old_server: testbed.DovecotServer) -> None:
    login, password = new_user(old_server, None)
    assert old_server.imap_port is not None
    upstream = ("127.0.0.1", old_server.imap_port)
    with FaultRelay(upstream, max_connections=3, overflow="bye") as relay:
        fixed = await _sessions(relay, login, password, trio.CapacityLimiter(8), None, jobs=60, workers=8)
    adaptive_limit = AdaptiveLimit("old", 8, cooldown=0.3)
    with FaultRelay(upstream, max_connections=3, overflow="bye") as relay:
        adaptive = await _sessions(relay, login, password, adaptive_limit.limiter, adaptive_limit, jobs=60, workers=8)
        assert relay.peak <= 3
    print(f"refused attempts: fixed 8 = {fixed}, adaptive = {adaptive}; final limit {adaptive_limit.current}")
    assert adaptive_limit.decreases >= 1
    assert adaptive < fixed
