"""Login throttling and the event store's growth under wrong logins, through the proxy to a real Dovecot.

A counting relay sits between the proxy and the old server: every connection
it accepts is one password check the old server had to answer.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from mailmigrator.adapters.proxy.backends import BackendRejected
from mailmigrator.adapters.proxy.protocol_errors import UserError
from mailmigrator.adapters.proxy.listeners import ProxyLimits
from mailmigrator.adapters.proxy.throttle import LoginThrottle
from mailmigrator.ops.config import load_config
from mailmigrator.ops.serve import Service, build_service
from mailmigrator.ops.composition import open_store
from fault_relay import FaultRelay
from proxy_fixtures import OLD_PASSWORD, Pair, pair, seed_user, with_free_ports, write_config

pytestmark = pytest.mark.dovecot
__all__ = ["pair"]


@asynccontextmanager
async def proxy_behind_relay(
    tmp: Path, pair: Pair, throttle: LoginThrottle, *, delay: float = 0.0, login_format: str = "email",
    relayed: bool = True,
) -> AsyncIterator[tuple[Service, int, FaultRelay]]:
    """A started service whose old IMAP server is reached through a counting relay; yields (service, imap port, relay)."""
    config = with_free_ports(load_config(write_config(tmp, pair)))
    with FaultRelay(("127.0.0.1", pair.old.imap_port), max_connections=10_000, delay=delay) as relay:
        assert config.source is not None
        old_port = relay.port if relayed else pair.old.imap_port
        source = config.source.model_copy(update={"imap_port": old_port, "login_format": login_format})
        config = config.model_copy(update={"source": source})
        wired = open_store(config, create=True)
        assert wired is not None
        wired.app.start_run("test")
        service = build_service(config, wired.app, ProxyLimits(failure_delay=0.0, idle_timeout=20.0), throttle)
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(service.run)
            port = next(p for l, p in bound if l.protocol == "imap" and not l.implicit_tls)
            yield service, port, relay
            nursery.cancel_scope.cancel()


def imap_login_reply(port: int, login: str, password: str, source: str = "127.0.0.1") -> bytes:
    """The tagged reply to one LOGIN, sent from `source` (any 127/8 address)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0)) as sock:
        f = sock.makefile("rb")
        f.readline()  # greeting
        sock.sendall(f'a1 LOGIN "{login}" "{password}"\r\n'.encode())
        while True:
            line = f.readline()
            if not line or line.startswith(b"a1 "):
                return line


async def in_parallel(calls: list[Callable[[], bytes]]) -> list[bytes]:
    replies: list[bytes] = []

    async def one(call: Callable[[], bytes]) -> None:
        replies.append(await trio.to_thread.run_sync(call, limiter=limiter))

    limiter = trio.CapacityLimiter(len(calls))
    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(one, call)
    return replies


def events_stored(service: Service) -> int:
    return service.app.recorder.max_notification_id() or 0


async def test_parallel_wrong_logins_reach_the_old_server_only_as_often_as_the_login_budget(
    pair: Pair, tmp_path: Path,
) -> None:
    seed_user(pair, "bob@example.com", messages=1)
    throttle = LoginThrottle(max_per_login=3, max_per_address=50)
    async with proxy_behind_relay(tmp_path, pair, throttle, delay=0.5) as (service, port, relay):
        # From 100 different addresses, so that only the per-login budget can hold them back.
        calls: list[Callable[[], bytes]] = [
            (lambda n=n: imap_login_reply(port, "bob", "wrong", f"127.0.1.{n + 1}")) for n in range(100)
        ]
        replies = await in_parallel(calls)
        assert relay.accepted <= 3
        assert sum(b"AUTHENTICATIONFAILED" in r for r in replies) == relay.accepted
        assert sum(b"Too many failed logins" in r for r in replies) == 100 - relay.accepted
        # The right password is refused too until the window moves on, without asking the old server.
        reply = await trio.to_thread.run_sync(imap_login_reply, port, "bob", OLD_PASSWORD, "127.0.1.200")
        assert b"Too many failed logins" in reply
        assert relay.accepted <= 3
        assert not service.app.has_account("bob@example.com")


async def test_logins_that_are_one_old_server_user_share_one_budget(pair: Pair, tmp_path: Path) -> None:
    throttle = LoginThrottle(max_per_login=3, max_per_address=50)
    async with proxy_behind_relay(tmp_path, pair, throttle, login_format="local-part") as (_, port, relay):
        for _ in range(3):
            reply = await trio.to_thread.run_sync(imap_login_reply, port, "carl@a.example", "wrong")
            assert b"AUTHENTICATIONFAILED" in reply
        assert relay.accepted == 3
        # With login_format = "local-part" the old server is shown "carl" for both.
        reply = await trio.to_thread.run_sync(imap_login_reply, port, "Carl@b.example", "wrong", "127.0.1.9")
        assert b"Too many failed logins" in reply
        assert relay.accepted == 3
        reply = await trio.to_thread.run_sync(imap_login_reply, port, "dora@a.example", "wrong")
        assert b"AUTHENTICATIONFAILED" in reply


async def test_logins_in_flight_per_client_address_are_capped(pair: Pair, tmp_path: Path) -> None:
    throttle = LoginThrottle(max_per_login=3, max_per_address=100, max_in_flight_per_address=10)
    async with proxy_behind_relay(tmp_path, pair, throttle, delay=1.0) as (_, port, relay):
        calls: list[Callable[[], bytes]] = [
            (lambda n=n: imap_login_reply(port, f"user{n}", "wrong", "127.0.2.1")) for n in range(30)
        ]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(in_parallel, calls)
            await trio.sleep(0.5)
            # Another address is not held back by that one.
            reply = await trio.to_thread.run_sync(imap_login_reply, port, "erin", "wrong", "127.0.2.2")
            assert b"AUTHENTICATIONFAILED" in reply
        # The attempts beyond 10 waited for a slot instead of reaching the old server at once.
        assert relay.accepted == 31
        assert relay.peak <= 11


class OldServerRejectsAll:
    """The service's own backends, with an old server that refuses every password at once."""

    def __init__(self, backends: Any) -> None:
        self.backends = backends

    async def old(self, protocol: str, credentials: Any) -> Any:
        raise BackendRejected("refused")

    async def new(self, protocol: str, credentials: Any) -> Any:
        return await self.backends.new(protocol, credentials)

    async def notice(self, protocol: str) -> Any:
        return await self.backends.notice(protocol)


async def test_distinct_rejected_logins_do_not_grow_the_store(pair: Pair, tmp_path: Path) -> None:
    throttle = LoginThrottle(max_per_address=10**9, max_in_flight_per_address=10**9)
    async with proxy_behind_relay(tmp_path, pair, throttle, relayed=False) as (service, _, _):
        router = service.proxy.router
        # A known account: its rejections are kept, one per interval.
        service.app.record_login("fred@example.com", "imap", "127.0.0.1", "127.0.0.1")
        before = events_stored(service)
        rejected = 0

        async def wrong_logins(first: int, step: int, total: int) -> None:
            nonlocal rejected
            for n in range(first, total, step):
                try:
                    await service.proxy.login(f"u{n}@example.com", "wrong", "imap", "127.0.3.1", "127.0.0.1")
                except UserError:
                    rejected += 1

        async def flood(total: int) -> None:
            async with trio.open_nursery() as nursery:
                for first in range(64):
                    nursery.start_soon(wrong_logins, first, 64, total)

        # The real old server answers some thousand wrong logins (it answers ~50 a second: the proxy is one client address) ...
        await flood(int(os.environ.get("REJECTED_BY_DOVECOT", "500")))
        for _ in range(4):
            with pytest.raises(UserError):
                await service.proxy.login("fred", "wrong", "imap", "127.0.3.2", "127.0.0.1")
        # ... and the rest of 100,000 meet an old server that refuses at once, through the same router.
        real = rejected
        router.backends = OldServerRejectsAll(router.backends)
        await flood(100_000 - real)
        assert rejected == 100_000
        assert events_stored(service) == before + 1  # fred's one PasswordRejected within the hour
        assert router.rejections.unrecorded == 100_000 + 3
