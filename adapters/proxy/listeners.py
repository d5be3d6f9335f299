"""The IMAP/POP3 login proxy's listeners: accept, admit, TLS, one session per connection, and the login.

One root nursery holds every listener (`trio.serve_tcp`); each connection
is handled in its own task, its stream closed in `finally`, and an error in
one connection ends that connection only. The sessions speak the protocol
before login (`imap_session`, `pop3_session`), the relays after it (`relay`).
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Never

import structlog
import trio

from mailmigrator.adapters.proxy.connection_slots import ConnectionSlots
from mailmigrator.adapters.proxy.imap_protocol import DEFAULT_MAX_LINE, DEFAULT_MAX_LITERAL
from mailmigrator.adapters.proxy.imap_session import ImapSession
from mailmigrator.adapters.proxy.pop3_session import Pop3Session
from mailmigrator.adapters.proxy.pre_auth_session import tls_handshake
from mailmigrator.adapters.proxy.backends import BackendSession
from mailmigrator.adapters.proxy.open_relays import OpenRelays
from mailmigrator.adapters.proxy.protocol_errors import ServerError, authentication_failed, migration_in_progress
from mailmigrator.adapters.proxy.relay import CONNECTION_ENDS
from mailmigrator.adapters.proxy.throttle import LoginThrottle
from mailmigrator.domain.use_cases.first_login import (
    AuthenticationFailed,
    FirstLogin,
    MigrationInProgress,
    Routed,
    ServerUnavailable,
    SwitchInProgress,
)

log = structlog.get_logger("mailmigrator.proxy")


@dataclass(frozen=True)
class Listener:
    """One listening address of the proxy."""

    protocol: Literal["imap", "pop3"]
    host: str
    port: int
    implicit_tls: bool = False


@dataclass(frozen=True)
class ProxyLimits:
    """Abuse limits: what an unauthenticated client may send, and what any connection may hold."""

    max_line: int = DEFAULT_MAX_LINE
    max_literal: int = DEFAULT_MAX_LITERAL
    idle_timeout: float = 60.0
    # The whole pre-auth phase, however the client paces its bytes.
    login_timeout: float = 120.0
    tls_handshake_timeout: float = 30.0
    failure_delay: float = 1.0
    # A client that does not read: how long one send may wait, before login and while relaying.
    send_timeout: float = 30.0
    relay_send_timeout: float = 600.0
    max_connections: int = 20_000
    # Generous: a company behind one NAT address comes from one address.
    max_connections_per_address: int = 1_000
    refusal_report_interval: float = 10.0


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The TLS context the proxy's own listeners present."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


def _address(sockname: object) -> str:
    if isinstance(sockname, tuple):
        return str(sockname[0])
    return str(sockname)


def _refusal_line(listener: Listener, refusal: str) -> bytes:
    """The one line a refused client is sent before the connection closes."""
    if listener.protocol == "imap":
        return f"* BYE [UNAVAILABLE] {refusal.capitalize()}, try again later.\r\n".encode()
    return f"-ERR [SYS/TEMP] {refusal.capitalize()}, try again later.\r\n".encode()


@dataclass
class LoginProxy:
    """Listeners plus the per-connection protocol loops."""

    router: FirstLogin[BackendSession]
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    ssl_context: ssl.SSLContext | None = None
    limits: ProxyLimits = field(default_factory=ProxyLimits)
    require_tls_for_login: bool = False
    # Relays to the old server, closed when their account switches to the new one.
    old_relays: OpenRelays = field(default_factory=OpenRelays)
    slots: ConnectionSlots = field(init=False)

    def __post_init__(self) -> None:
        self.slots = ConnectionSlots(self.limits.max_connections, self.limits.max_connections_per_address)

    async def serve(
        self,
        listeners: list[Listener],
        *,
        task_status: trio.TaskStatus[list[tuple[Listener, int]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on every address until cancelled; reports (listener, bound port) pairs when ready."""
        bound: list[tuple[Listener, int]] = []
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                if listener.implicit_tls and self.ssl_context is None:
                    raise ValueError(f"{listener.protocol}s listener {listener.host}:{listener.port} needs tls_cert and tls_key")
                handler = self._handler(listener)
                sockets = await nursery.start(functools.partial(trio.serve_tcp, handler, listener.port, host=listener.host))
                port = sockets[0].socket.getsockname()[1]
                bound.append((listener, port))
                log.info("listening", protocol=listener.protocol, tls=listener.implicit_tls, address=f"{listener.host}:{port}")
            nursery.start_soon(self._report_refusals)
            task_status.started(bound)

    async def _report_refusals(self) -> None:
        while True:
            await trio.sleep(self.limits.refusal_report_interval)
            count, busiest = self.slots.take_refusals()
            if count:
                log.warning("connections refused", count=count, seconds=self.limits.refusal_report_interval,
                            busiest=dict(busiest), open=self.slots.total)

    def _handler(self, listener: Listener) -> Callable[[trio.SocketStream], Awaitable[None]]:
        async def handle(stream: trio.SocketStream) -> None:
            await self.handle_connection(stream, listener)

        return handle

    async def handle_connection(self, raw: trio.SocketStream, listener: Listener) -> None:
        """Run one client connection to its end; any error in it ends this connection only.

        Everything a connection does, down to asking the kernel for its
        addresses (a peer that reset already has none), happens inside this
        boundary, as trio's `serve_listeners` expects of a handler.
        """
        login_deadline = trio.current_time() + self.limits.login_timeout
        client_address = "unknown"
        stream: trio.abc.Stream = raw
        holds_slot = False
        try:
            client_address = _address(raw.socket.getpeername())
            local_address = _address(raw.socket.getsockname())
            refusal = self.slots.take(client_address)
            if refusal is not None:
                await self._refuse(raw, listener, refusal)
                return
            holds_slot = True
            if listener.implicit_tls:
                assert self.ssl_context is not None
                stream = trio.SSLStream(raw, self.ssl_context, server_side=True)
                await tls_handshake(stream, self.limits.tls_handshake_timeout, login_deadline)
            await self._session(listener, stream, client_address, local_address, login_deadline).run()
        except CONNECTION_ENDS as e:
            log.info("connection ended", client=client_address, reason=type(e).__name__)
        except Exception:
            log.exception("connection failed", client=client_address)
        finally:
            if holds_slot:
                self.slots.give_back(client_address)
            await trio.aclose_forcefully(stream)

    def _session(
        self, listener: Listener, stream: trio.abc.Stream, client: str, local: str, login_deadline: float
    ) -> ImapSession | Pop3Session:
        session_type = ImapSession if listener.protocol == "imap" else Pop3Session
        return session_type(self, stream, client, local, listener.implicit_tls, login_deadline)

    async def _refuse(self, raw: trio.SocketStream, listener: Listener, refusal: str) -> None:
        """One line in the listener's protocol, then close; on a TLS port, just close (a handshake is what we refuse)."""
        if listener.implicit_tls:
            return
        with trio.move_on_after(self.limits.send_timeout):
            await raw.send_all(_refusal_line(listener, refusal))

    async def login(
        self, raw_login: str, password: str, protocol: Literal["imap", "pop3"], client_address: str, local_address: str
    ) -> Routed[BackendSession]:
        """Reserve a throttle slot, then route; raises `ProtocolError` for the client."""
        keys = self.router.throttle_keys(raw_login, local_address)
        attempt = await self.throttle.begin(keys, client_address)
        if isinstance(attempt, str):
            await self._throttled(attempt, keys[0], client_address)
        try:
            routed = await self.router.route(raw_login, password, protocol, client_address, local_address)
        except AuthenticationFailed:
            attempt.failed()
            log.info("login failed", login=keys[0], client=client_address, protocol=protocol)
            await trio.sleep(self.limits.failure_delay)
            raise authentication_failed() from None
        except ServerUnavailable as e:
            attempt.release()
            raise ServerError(str(e)) from None
        except MigrationInProgress:
            attempt.release()
            raise migration_in_progress() from None
        except SwitchInProgress as e:
            attempt.release()
            raise ServerError(str(e), "UNAVAILABLE", "IN-USE") from None
        except BaseException:
            attempt.release()
            raise
        attempt.succeeded()
        log.info("login", login=routed.login, client=client_address, protocol=protocol, destination=routed.destination)
        return routed

    async def _throttled(self, reason: str, login: str, client_address: str) -> Never:
        """Refuse an attempt the throttle did not let start, after the failure delay."""
        log.warning("login throttled", login=login, client=client_address, reason=reason)
        await trio.sleep(self.limits.failure_delay)
        if reason == "in-flight":
            raise ServerError("Too many logins in progress from your address, try again later.", "UNAVAILABLE", "IN-USE")
        raise ServerError("Too many failed logins, try again later.", "UNAVAILABLE", "IN-USE")
