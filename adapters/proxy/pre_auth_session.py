"""What the IMAP and POP3 sessions share before login: the client's stream, with a timeout on every wait."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, TypeVar

import trio

if TYPE_CHECKING:
    from mailmigrator.adapters.proxy.listeners import LoginProxy

_Transport = TypeVar("_Transport", bound=trio.abc.Stream)


class IdleTimeout(Exception):
    """The client sent nothing for too long, or did not log in in time; the text says which."""


async def tls_handshake(tls: trio.SSLStream[_Transport], timeout: float, login_deadline: float) -> None:
    """The server's TLS handshake, within `timeout` and never past `login_deadline`."""
    with trio.fail_at(min(trio.current_time() + timeout, login_deadline)):
        await tls.do_handshake()


class PreAuthSession(abc.ABC):
    """One client connection before login: greeted, answered command by command, relayed after its login."""

    # One per connection, thousands at once: no instance dict.
    __slots__ = ("proxy", "stream", "client", "local", "tls", "login_deadline")

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

    async def run(self) -> None:
        """Greet the client and answer it until it leaves, times out, or is relayed after its login."""
        await self.send(self.greeting())
        try:
            while await self.answer_next():
                pass
        except IdleTimeout as e:
            await self.send(self.farewell(str(e)))
        except EOFError:
            return

    @abc.abstractmethod
    def greeting(self) -> bytes:
        """The server greeting sent when the connection opens."""

    @abc.abstractmethod
    def farewell(self, reason: str) -> bytes:
        """The last line before the proxy hangs up on a client that was too slow."""

    @abc.abstractmethod
    async def answer_next(self) -> bool:
        """Answer the client's next input; False when the session is over."""

    @property
    def may_log_in(self) -> bool:
        """Whether a login is allowed on this connection as it is (TLS first, when so configured)."""
        return self.tls or not self.proxy.require_tls_for_login

    @property
    def offers_tls(self) -> bool:
        """Whether the client may still upgrade this connection to TLS."""
        return not self.tls and self.proxy.ssl_context is not None

    async def send(self, data: bytes) -> None:
        """Send to the client; `trio.TooSlowError` when it does not read in time."""
        with trio.fail_after(self.proxy.limits.send_timeout):
            await self.stream.send_all(data)

    async def receive(self) -> bytes:
        """The next bytes from the client; `IdleTimeout` when too slow, `EOFError` at its end."""
        idle_deadline = trio.current_time() + self.proxy.limits.idle_timeout
        with trio.move_on_at(min(idle_deadline, self.login_deadline)):
            if isinstance(self.stream, trio.SocketStream):
                # Waited for here, trio's receive finds data at once: the would-block exception it would
                # catch otherwise leaves frame objects behind in every waiting connection.
                await trio.lowlevel.wait_readable(self.stream.socket)
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError()
            return bytes(data)
        if idle_deadline < self.login_deadline:
            raise IdleTimeout("Idle too long, disconnecting.")
        raise IdleTimeout("Too long without logging in, disconnecting.")

    async def start_tls(self) -> None:
        """Upgrade the connection to TLS after the client's STARTTLS or STLS has been answered."""
        assert self.proxy.ssl_context is not None
        tls = trio.SSLStream(self.stream, self.proxy.ssl_context, server_side=True)
        await tls_handshake(tls, self.proxy.limits.tls_handshake_timeout, self.login_deadline)
        self.stream = tls
        self.tls = True
