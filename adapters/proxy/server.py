"""The IMAP/POP3 login proxy: speaks pre-authentication itself, then relays bytes to a backend.

One root nursery holds every listener (`trio.serve_tcp`); each connection
is handled in its own task, its stream closed in `finally`, and an error in
one connection ends that connection only. Parsing lives in
imap_protocol.py / pop3_protocol.py; this module owns the streams.
"""

from __future__ import annotations

import base64
import functools
import math
import os
import ssl
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog
import trio

from mailmigrator.adapters.proxy.backends import BackendSession
from mailmigrator.adapters.proxy.connection_slots import ConnectionSlots
from mailmigrator.adapters.proxy.imap_protocol import (
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_LITERAL,
    PRE_AUTH_COMMANDS,
    Command,
    ContinuationNeeded,
    Framed,
    ImapCommandReader,
    InputRefused,
    decode_initial_response,
    decode_sasl_plain,
    parse_command,
    parse_sasl_line,
)
from mailmigrator.domain.use_cases.first_login import (
    AuthenticationFailed,
    FirstLogin,
    MigrationInProgress,
    Routed,
    ServerUnavailable,
)
from mailmigrator.adapters.proxy.pop3_protocol import (
    LineTooLong,
    Pop3LineReader,
    parse_pop3_command,
)
from mailmigrator.adapters.proxy.protocol_errors import (
    CommandSyntaxError,
    ProtocolError,
    ServerError,
    UserError,
    authentication_failed,
    imap_reply,
    migration_in_progress,
    pop3_reply,
)
from mailmigrator.adapters.proxy.throttle import LoginThrottle

log = structlog.get_logger("mailmigrator.proxy")

RELAY_CHUNK = 256 * 1024
RELAY_SMALL_CHUNK = 16 * 1024
RELAY_QUIET_SECONDS = 1.0
# Commands a user may send in the migration account: nothing that changes it.
NOTICE_IMAP_COMMANDS = frozenset({
    "CAPABILITY", "NOOP", "LOGOUT", "SELECT", "EXAMINE", "LIST", "LSUB", "STATUS", "FETCH",
    "SEARCH", "CHECK", "CLOSE", "UNSELECT", "NAMESPACE", "ID", "ENABLE", "GETQUOTAROOT", "GETQUOTA",
})
NOTICE_UID_COMMANDS = frozenset({"FETCH", "SEARCH"})
NOTICE_POP3_COMMANDS = frozenset({"STAT", "LIST", "UIDL", "RETR", "TOP", "NOOP", "QUIT", "CAPA", "RSET"})
# A refused command is sent on as this harmless one under the same tag, so the
# backend answers NO in its proper place in the response stream.
_READ_ONLY_PROBE = b' STATUS "Migration in progress: this mailbox is read-only" (MESSAGES)\r\n'


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


class IdleTimeout(Exception):
    """The client sent nothing for too long, or did not log in in time; the text says which."""


class _PreAuthSession:
    """What IMAP and POP3 sessions share before login: the stream, with a timeout on every wait."""

    def __init__(
        self, proxy: LoginProxy, stream: trio.abc.Stream, client: str, local: str, tls: bool, login_deadline: float
    ) -> None:
        self.proxy = proxy
        self.stream = stream
        self.client = client
        self.local = local
        self.tls = tls
        # One deadline for the whole pre-auth phase: a byte now and then must not hold a connection.
        self.login_deadline = login_deadline

    async def send(self, data: bytes) -> None:
        """Send to the client; `trio.TooSlowError` when it does not read in time."""
        with trio.fail_after(self.proxy.limits.send_timeout):
            await self.stream.send_all(data)

    async def receive(self) -> bytes:
        """The next bytes from the client; `IdleTimeout` when too slow, `EOFError` at its end."""
        idle_deadline = trio.current_time() + self.proxy.limits.idle_timeout
        with trio.move_on_at(min(idle_deadline, self.login_deadline)):
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError()
            return bytes(data)
        if idle_deadline < self.login_deadline:
            raise IdleTimeout("Idle too long, disconnecting.")
        raise IdleTimeout("Too long without logging in, disconnecting.")

    async def start_tls(self) -> None:
        assert self.proxy.ssl_context is not None
        tls = trio.SSLStream(self.stream, self.proxy.ssl_context, server_side=True)
        with trio.fail_at(min(trio.current_time() + self.proxy.limits.tls_handshake_timeout, self.login_deadline)):
            await tls.do_handshake()
        self.stream = tls
        self.tls = True


@dataclass
class LoginProxy:
    """Listeners plus the per-connection protocol loops."""

    router: FirstLogin[BackendSession]
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    ssl_context: ssl.SSLContext | None = None
    limits: ProxyLimits = field(default_factory=ProxyLimits)
    require_tls_for_login: bool = False
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
                with trio.fail_at(min(trio.current_time() + self.limits.tls_handshake_timeout, login_deadline)):
                    await stream.do_handshake()
            session_type = ImapSession if listener.protocol == "imap" else Pop3Session
            session = session_type(self, stream, client_address, local_address, listener.implicit_tls, login_deadline)
            await session.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ssl.SSLError, OSError) as e:
            log.info("connection ended", client=client_address, reason=type(e).__name__)
        except Exception:
            log.exception("connection failed", client=client_address)
        finally:
            if holds_slot:
                self.slots.give_back(client_address)
            await trio.aclose_forcefully(stream)

    async def _refuse(self, raw: trio.SocketStream, listener: Listener, refusal: str) -> None:
        """One line in the listener's protocol, then close; on a TLS port, just close (a handshake is what we refuse)."""
        if listener.implicit_tls:
            return
        text = f"* BYE [UNAVAILABLE] {refusal.capitalize()}, try again later.\r\n" if listener.protocol == "imap" \
            else f"-ERR [SYS/TEMP] {refusal.capitalize()}, try again later.\r\n"
        with trio.move_on_after(self.limits.send_timeout):
            await raw.send_all(text.encode())

    async def login(
        self, raw_login: str, password: str, protocol: Literal["imap", "pop3"], client_address: str, local_address: str
    ) -> Routed[BackendSession]:
        """Reserve a throttle slot, then route; raises `ProtocolError` for the client."""
        keys = self.router.throttle_keys(raw_login, local_address)
        attempt = await self.throttle.begin(keys, client_address)
        if isinstance(attempt, str):
            log.warning("login throttled", login=keys[0], client=client_address, reason=attempt)
            await trio.sleep(self.limits.failure_delay)
            if attempt == "in-flight":
                raise ServerError("Too many logins in progress from your address, try again later.", "UNAVAILABLE", "IN-USE")
            raise ServerError("Too many failed logins, try again later.", "UNAVAILABLE", "IN-USE")
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
        except BaseException:
            attempt.release()
            raise
        attempt.succeeded()
        log.info("login", login=routed.login, client=client_address, protocol=protocol, destination=routed.destination)
        return routed


def _address(sockname: object) -> str:
    if isinstance(sockname, tuple):
        return str(sockname[0])
    return str(sockname)


class ImapSession(_PreAuthSession):
    """One IMAP client before login (RFC 3501 section 6.1-6.2, RFC 9051 section 6.1-6.2)."""

    def __init__(
        self, proxy: LoginProxy, stream: trio.abc.Stream, client: str, local: str, tls: bool, login_deadline: float
    ) -> None:
        super().__init__(proxy, stream, client, local, tls, login_deadline)
        limits = proxy.limits
        self.reader = ImapCommandReader(max_line=limits.max_line, max_literal=limits.max_literal)

    async def event(self) -> object:
        while (event := self.reader.next_event()) is None:
            self.reader.receive(await self.receive())
        return event

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE"]
        if not self.tls and self.proxy.ssl_context is not None:
            caps.append("STARTTLS")
        if not self.tls and self.proxy.require_tls_for_login:
            caps.append("LOGINDISABLED")  # RFC 3501 section 6.2.3: no AUTH= either
        else:
            caps += ["AUTH=PLAIN", "AUTH=LOGIN"]
        return " ".join(caps)

    async def run(self) -> None:
        await self.send(f"* OK [CAPABILITY {self.capabilities()}] Mail service ready.\r\n".encode())
        try:
            while True:
                event = await self.event()
                if isinstance(event, ContinuationNeeded):
                    await self.send(b"+ Ready for literal data\r\n")
                    continue
                if isinstance(event, InputRefused):
                    await self.send(imap_reply(event.tag, event.error))
                    if event.error.fatal:
                        await self.send(b"* BYE Input too large.\r\n")
                        return
                    continue
                assert isinstance(event, Framed)
                try:
                    command = parse_command(event)
                except CommandSyntaxError as e:
                    await self.send(imap_reply(getattr(e, "tag", "*"), e))
                    continue
                routed = await self.dispatch(command)
                if routed is None:
                    if command.name == "LOGOUT":
                        return
                    continue
                await self.after_login(command.tag, routed)
                return
        except IdleTimeout as e:
            await self.send(f"* BYE {e}\r\n".encode())
        except EOFError:
            return

    async def dispatch(self, command: Command) -> Routed[BackendSession] | None:
        tag, name = command.tag, command.name
        if name not in PRE_AUTH_COMMANDS:
            await self.send(f"{tag} BAD Command not allowed before login.\r\n".encode())
            return None
        if name == "CAPABILITY":
            await self.send(f"* CAPABILITY {self.capabilities()}\r\n{tag} OK Capability completed.\r\n".encode())
        elif name == "NOOP":
            await self.send(f"{tag} OK NOOP completed.\r\n".encode())
        elif name == "ID":
            await self.send(f'* ID ("name" "mailmigrator")\r\n{tag} OK ID completed.\r\n'.encode())
        elif name == "LOGOUT":
            await self.send(f"* BYE Logging out.\r\n{tag} OK Logout completed.\r\n".encode())
        elif name == "STARTTLS":
            await self.starttls(tag)
        elif name == "LOGIN":
            user, password = command.args
            assert isinstance(user, str) and isinstance(password, str)
            return await self.try_login(tag, user, password)
        elif name == "AUTHENTICATE":
            return await self.authenticate(command)
        return None

    async def starttls(self, tag: str) -> None:
        if self.tls or self.proxy.ssl_context is None:
            await self.send(f"{tag} BAD TLS is not available here.\r\n".encode())
            return
        await self.send(f"{tag} OK Begin TLS negotiation now.\r\n".encode())
        # RFC 3501 section 6.2.1 (and RFC 2595 section 3.1): anything the client
        # pipelined after STARTTLS in clear text is dropped, not obeyed.
        self.reader = ImapCommandReader(max_line=self.reader.max_line, max_literal=self.reader.max_literal)
        await self.start_tls()

    async def authenticate(self, command: Command) -> Routed[BackendSession] | None:
        tag = command.tag
        mechanism = str(command.args[0]).upper()
        try:
            if not self.tls and self.proxy.require_tls_for_login:
                raise UserError("Log in after STARTTLS.", "PRIVACYREQUIRED")
            if mechanism == "PLAIN":
                if len(command.args) == 2:
                    response = decode_initial_response(str(command.args[1]))
                else:
                    response = await self.sasl_step(b"")
                authzid, user, password = decode_sasl_plain(response)
                if authzid and authzid != user:
                    raise UserError("Authorization identity must be the user.", "AUTHORIZATIONFAILED")
            elif mechanism == "LOGIN":
                user = (await self.sasl_step(b"Username:")).decode("utf-8")
                password = (await self.sasl_step(b"Password:")).decode("utf-8")
            else:
                raise UserError("Unsupported authentication mechanism.", "CANNOT")
        except SaslCancelled:
            await self.send(f"{tag} BAD Authentication cancelled.\r\n".encode())
            return None
        except UnicodeDecodeError:
            await self.send(f"{tag} BAD Credentials are not UTF-8.\r\n".encode())
            return None
        except ProtocolError as e:
            await self.send(imap_reply(tag, e))
            return None
        return await self.try_login(tag, user, password)

    async def sasl_step(self, challenge: bytes) -> bytes:
        await self.send(b"+ " + base64.b64encode(challenge) + b"\r\n")
        self.reader.expect_raw_lines(True)
        try:
            event = await self.event()
        finally:
            self.reader.expect_raw_lines(False)
        if isinstance(event, InputRefused):
            raise event.error
        assert isinstance(event, Framed)
        data = parse_sasl_line(event.pieces[0])
        if data is None:
            raise SaslCancelled()
        return data

    async def try_login(self, tag: str, user: str, password: str) -> Routed[BackendSession] | None:
        if not self.tls and self.proxy.require_tls_for_login:
            await self.send(f"{tag} NO [PRIVACYREQUIRED] Log in after STARTTLS.\r\n".encode())
            return None
        try:
            return await self.proxy.login(user, password, "imap", self.client, self.local)
        except ProtocolError as e:
            await self.send(imap_reply(tag, e))
            return None

    async def after_login(self, tag: str, routed: Routed[BackendSession]) -> None:
        session = routed.session
        try:
            caps = session.capabilities
            if routed.destination == "notice":
                caps = " ".join(c for c in caps.split() if c.upper() not in ("IDLE", "NOTIFY"))
            # RFC 3501 section 7.1: a CAPABILITY response code on the tagged OK tells
            # the client the backend's post-login capabilities.
            await self.send(f"{tag} OK [CAPABILITY {caps}] Logged in.\r\n".encode())
            # Whatever the client pipelined after the login command, byte for byte.
            leftover = self.reader.unconsumed()
            if routed.destination == "notice":
                await relay_read_only_imap(self.stream, session, leftover, self.reader, self.proxy.limits.relay_send_timeout)
            else:
                await relay(self.stream, session, leftover, self.proxy.limits.relay_send_timeout)
        finally:
            await session.aclose()


class SaslCancelled(Exception):
    """The client answered a SASL challenge with `*`."""


class Pop3Session(_PreAuthSession):
    """One POP3 client in the AUTHORIZATION state (RFC 1939 section 4)."""

    def __init__(
        self, proxy: LoginProxy, stream: trio.abc.Stream, client: str, local: str, tls: bool, login_deadline: float
    ) -> None:
        super().__init__(proxy, stream, client, local, tls, login_deadline)
        self.reader = Pop3LineReader(max_line=proxy.limits.max_line)
        self.user: str | None = None

    async def line(self) -> bytes | LineTooLong:
        while (line := self.reader.next_line()) is None:
            self.reader.receive(await self.receive())
        return line

    def capabilities(self) -> list[str]:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE"]
        if not self.tls and self.proxy.ssl_context is not None:
            caps.append("STLS")
        if self.tls or not self.proxy.require_tls_for_login:
            caps += ["USER", "SASL PLAIN"]
        return caps

    async def run(self) -> None:
        await self.send(b"+OK Mail service ready.\r\n")
        try:
            while True:
                line = await self.line()
                if isinstance(line, LineTooLong):
                    await self.send(b"-ERR Line too long.\r\n")
                    continue
                try:
                    command = parse_pop3_command(line)
                    routed = await self.dispatch(command.name, command.args)
                except ProtocolError as e:
                    await self.send(pop3_reply(e))
                    continue
                if command.name == "QUIT":
                    return
                if routed is not None:
                    await self.send(b"+OK Logged in.\r\n")
                    try:
                        leftover = self.reader.unconsumed()
                        if routed.destination == "notice":
                            await relay_read_only_pop3(self.stream, routed.session, leftover, self.proxy.limits.relay_send_timeout)
                        else:
                            await relay(self.stream, routed.session, leftover, self.proxy.limits.relay_send_timeout)
                    finally:
                        await routed.session.aclose()
                    return
        except IdleTimeout as e:
            await self.send(f"-ERR {e}\r\n".encode())
        except EOFError:
            return

    async def dispatch(self, name: str, args: tuple[str, ...]) -> Routed[BackendSession] | None:
        if name == "CAPA":
            await self.send(("+OK\r\n" + "".join(c + "\r\n" for c in self.capabilities()) + ".\r\n").encode())
        elif name == "NOOP":
            await self.send(b"+OK\r\n")
        elif name == "QUIT":
            await self.send(b"+OK Bye.\r\n")
        elif name == "STLS":
            await self.stls()
        elif name == "USER":
            self.require_tls()
            self.user = args[0]
            await self.send(b"+OK\r\n")
        elif name == "PASS":
            self.require_tls()
            if self.user is None:
                raise CommandSyntaxError("Send USER first.")
            user, self.user = self.user, None
            return await self.proxy.login(user, args[0], "pop3", self.client, self.local)
        elif name == "AUTH":
            return await self.auth(args)
        else:
            raise CommandSyntaxError("Unknown command or not allowed before login.")
        return None

    def require_tls(self) -> None:
        if not self.tls and self.proxy.require_tls_for_login:
            raise UserError("Log in after STLS.", pop3_code="AUTH")

    async def stls(self) -> None:
        if self.tls or self.proxy.ssl_context is None:
            raise CommandSyntaxError("TLS is not available here.")
        await self.send(b"+OK Begin TLS negotiation.\r\n")
        # RFC 2595 section 4: what was pipelined in clear text is discarded.
        self.reader = Pop3LineReader(max_line=self.reader.max_line)
        await self.start_tls()

    async def auth(self, args: tuple[str, ...]) -> Routed[BackendSession] | None:
        if not args:
            await self.send(b"+OK\r\nPLAIN\r\n.\r\n")
            return None
        self.require_tls()
        if args[0].upper() != "PLAIN":
            raise UserError("Unsupported authentication mechanism.", pop3_code="AUTH")
        if len(args) == 2:
            response = decode_initial_response(args[1])
        else:
            await self.send(b"+ \r\n")
            line = await self.line()
            if isinstance(line, LineTooLong):
                raise CommandSyntaxError("Line too long.")
            data = parse_sasl_line(line)
            if data is None:
                raise CommandSyntaxError("Authentication cancelled.")
            response = data
        authzid, user, password = decode_sasl_plain(response)
        if authzid and authzid != user:
            raise UserError("Authorization identity must be the user.", pop3_code="AUTH")
        return await self.proxy.login(user, password, "pop3", self.client, self.local)


_RELAY_ENDS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ssl.SSLError, OSError)
"""What ends a relay quietly: either side gone, or not reading for `send_timeout`."""


async def _send(stream: trio.abc.Stream, data: bytes | bytearray, timeout: float) -> None:
    with trio.fail_after(timeout):
        await stream.send_all(data)


async def relay(client: trio.abc.Stream, session: BackendSession, to_backend: bytes, send_timeout: float) -> None:
    """Copy bytes both ways until either side closes or stops reading for `send_timeout` seconds."""
    backend = session.stream
    if session.pending:
        await _send(client, session.pending, send_timeout)
    if to_backend:
        await _send(backend, to_backend, send_timeout)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump, client, backend, nursery.cancel_scope, send_timeout)
        nursery.start_soon(_pump, backend, client, nursery.cancel_scope, send_timeout)


async def _socket_pump(source: trio.socket.SocketType, sink: trio.socket.SocketType, send_timeout: float) -> None:
    """Copy bytes from one plain TCP socket to another until `source` reaches end of stream."""
    # Every byte of every proxied mailbox passes here. A reused buffer and one
    # scheduler pass per chunk cost less CPU than receive_some/send_all, which
    # allocate per chunk and yield twice per call (bench/relay.py). Commands and
    # short replies fit the small buffer; a full read switches to RELAY_CHUNK,
    # which is given back once the stream has been quiet for RELAY_QUIET_SECONDS,
    # so thousands of idle or chatty relayed connections hold little memory.
    buffer = bytearray(RELAY_SMALL_CHUNK)
    fd_in, fd_out = source.fileno(), sink.fileno()
    while True:
        await trio.lowlevel.checkpoint()
        try:
            count = os.readv(fd_in, [buffer])
        except BlockingIOError:
            with trio.move_on_after(RELAY_QUIET_SECONDS if len(buffer) > RELAY_SMALL_CHUNK else math.inf) as quiet:
                await trio.lowlevel.wait_readable(fd_in)
            if quiet.cancelled_caught:
                buffer = bytearray(RELAY_SMALL_CHUNK)
            continue
        if not count:
            return
        view = memoryview(buffer)
        sent = 0
        while sent < count:
            try:
                sent += os.write(fd_out, view[sent:count])
            except BlockingIOError:
                with trio.fail_after(send_timeout):
                    await trio.lowlevel.wait_writable(fd_out)
        if count == len(buffer) < RELAY_CHUNK:
            buffer = bytearray(RELAY_CHUNK)


async def _pump(source: trio.abc.Stream, sink: trio.abc.Stream, scope: trio.CancelScope, send_timeout: float) -> None:
    try:
        if isinstance(source, trio.SocketStream) and isinstance(sink, trio.SocketStream):
            await _socket_pump(source.socket, sink.socket, send_timeout)
            return
        while True:
            data = await source.receive_some(RELAY_CHUNK)
            if not data:
                return
            await _send(sink, data, send_timeout)
    except _RELAY_ENDS:
        return
    finally:
        scope.cancel()


NoticeReply = tuple[bytes, bytes, bool]
"""What one piece of client input becomes: bytes for the backend, bytes for the client, and whether to hang up."""


async def relay_read_only_imap(
    client: trio.abc.Stream, session: BackendSession, leftover: bytes, reader: ImapCommandReader, send_timeout: float
) -> None:
    """Relay to the migration account, letting through only commands that change nothing.

    SELECT becomes EXAMINE (RFC 3501 section 6.3.2: nothing is changed, `\\Seen` is
    not set); anything else that could change the mailbox is answered NO by the
    backend itself, through a harmless probe under the same tag.
    """
    commands = ImapCommandReader(max_line=reader.max_line, max_literal=reader.max_literal)

    def screen(data: bytes) -> Iterator[NoticeReply]:
        for event in commands.feed(data):
            if isinstance(event, ContinuationNeeded):
                yield b"", b"+ Ready for literal data\r\n", False
            elif isinstance(event, InputRefused):
                yield b"", imap_reply(event.tag, event.error), event.error.fatal
            else:
                yield _read_only_command(event), b"", False

    await _relay_screened(client, session, leftover, screen, send_timeout)


def _read_only_command(framed: Framed) -> bytes:
    first = framed.pieces[0] if framed.pieces else b""
    words = first.split(b" ", 3)
    tag = words[0]
    name = words[1].upper() if len(words) > 1 else b""
    sub = words[2].upper() if len(words) > 2 else b""
    allowed = name.decode("ascii", "replace") in NOTICE_IMAP_COMMANDS or (
        name == b"UID" and sub.decode("ascii", "replace") in NOTICE_UID_COMMANDS
    )
    if not allowed:
        return tag + _READ_ONLY_PROBE
    if name == b"SELECT":
        pieces = (b" ".join([tag, b"EXAMINE", *words[2:]]),) + framed.pieces[1:]
        framed = Framed(pieces, framed.literals)
    return framed.raw(non_synchronising=True)


async def relay_read_only_pop3(
    client: trio.abc.Stream, session: BackendSession, leftover: bytes, send_timeout: float
) -> None:
    """Relay to the migration account over POP3; DELE and other changes are refused."""
    lines = Pop3LineReader()

    def screen(data: bytes) -> Iterator[NoticeReply]:
        for line in lines.feed(data):
            name = line.split(b" ", 1)[0].upper().decode("ascii", "replace") if isinstance(line, bytes) else ""
            if isinstance(line, bytes) and name in NOTICE_POP3_COMMANDS:
                yield line + b"\r\n", b"", False
            else:
                yield b"", b"-ERR [SYS/PERM] Migration in progress: this mailbox is read-only.\r\n", False

    await _relay_screened(client, session, leftover, screen, send_timeout)


async def _relay_screened(
    client: trio.abc.Stream, session: BackendSession, leftover: bytes,
    screen: Callable[[bytes], Iterable[NoticeReply]], send_timeout: float,
) -> None:
    """Relay both ways, passing what the client sends through `screen` first."""
    backend = session.stream
    client_lock = trio.Lock()
    if session.pending:
        await _send(client, session.pending, send_timeout)

    async def to_backend(scope: trio.CancelScope) -> None:
        try:
            data = leftover
            while True:
                for to_backend, to_client, hang_up in screen(data):
                    if to_backend:
                        await _send(backend, to_backend, send_timeout)
                    if to_client:
                        async with client_lock:
                            await _send(client, to_client, send_timeout)
                    if hang_up:
                        return
                data = bytes(await client.receive_some(RELAY_CHUNK))
                if not data:
                    return
        except _RELAY_ENDS:
            return
        finally:
            scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(to_backend, nursery.cancel_scope)
        nursery.start_soon(_backend_to_client, backend, client, client_lock, nursery.cancel_scope, send_timeout)


async def _backend_to_client(
    backend: trio.abc.Stream, client: trio.abc.Stream, client_lock: trio.Lock, scope: trio.CancelScope,
    send_timeout: float,
) -> None:
    """Copy the backend's bytes to the client until either side closes, then end the relay."""
    try:
        while True:
            data = await backend.receive_some(RELAY_CHUNK)
            if not data:
                return
            async with client_lock:
                await _send(client, data, send_timeout)
    except _RELAY_ENDS:
        return
    finally:
        scope.cancel()
