"""One POP3 client before login: the proxy answers it itself until USER/PASS or AUTH succeeds, then relays."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from mailmigrator.adapters.proxy.imap_protocol import decode_initial_response, decode_sasl_plain, parse_sasl_line
from mailmigrator.adapters.proxy.pop3_protocol import LineTooLong, Pop3LineReader, parse_pop3_command
from mailmigrator.adapters.proxy.pre_auth_session import PreAuthSession
from mailmigrator.adapters.proxy.protocol_errors import CommandSyntaxError, ProtocolError, UserError, pop3_reply
from mailmigrator.adapters.proxy.relay import relay, relay_pop3_until_moved, relay_read_only_pop3

if TYPE_CHECKING:
    from mailmigrator.adapters.proxy.listeners import LoginProxy
    from mailmigrator.adapters.proxy.backends import BackendSession
    from mailmigrator.domain.use_cases.first_login import Routed


class Pop3Session(PreAuthSession):
    """One POP3 client in the AUTHORIZATION state (RFC 1939 section 4)."""

    __slots__ = ("reader", "user")

    def __init__(
        self, proxy: LoginProxy, stream: trio.abc.Stream, client: str, local: str, tls: bool, login_deadline: float
    ) -> None:
        super().__init__(proxy, stream, client, local, tls, login_deadline)
        self.reader = Pop3LineReader(max_line=proxy.limits.max_line)
        self.user: str | None = None

    async def line(self) -> bytes | LineTooLong:
        """The client's next line, receiving until there is one."""
        while (line := self.reader.next_line()) is None:
            self.reader.receive(await self.receive())
        return line

    def capabilities(self) -> list[str]:
        """The CAPA list (RFC 2449), as this connection stands."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE"]
        if self.offers_tls:
            caps.append("STLS")
        if self.may_log_in:
            caps += ["USER", "SASL PLAIN"]
        return caps

    def greeting(self) -> bytes:
        return b"+OK Mail service ready.\r\n"

    def farewell(self, reason: str) -> bytes:
        return f"-ERR {reason}\r\n".encode()

    async def answer_next(self) -> bool:
        """Answer the client's next line; False after QUIT, and after a login once its relay has ended."""
        line = await self.line()
        if isinstance(line, LineTooLong):
            await self.send(b"-ERR Line too long.\r\n")
            return True
        try:
            command = parse_pop3_command(line)
            routed = await self.dispatch(command.name, command.args)
        except ProtocolError as e:
            await self.send(pop3_reply(e))
            return True
        if command.name == "QUIT":
            return False
        if routed is None:
            return True
        await self.after_login(routed)
        return False

    async def dispatch(self, name: str, args: tuple[str, ...]) -> Routed[BackendSession] | None:
        """Answer a command allowed before login; the routed backend when it was a successful login."""
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
        """`UserError` when this connection must use STLS before a login."""
        if not self.may_log_in:
            raise UserError("Log in after STLS.", pop3_code="AUTH")

    async def stls(self) -> None:
        if not self.offers_tls:
            raise CommandSyntaxError("TLS is not available here.")
        await self.send(b"+OK Begin TLS negotiation.\r\n")
        # RFC 2595 section 4: what was pipelined in clear text is discarded.
        self.reader = Pop3LineReader(max_line=self.reader.max_line)
        await self.start_tls()

    async def auth(self, args: tuple[str, ...]) -> Routed[BackendSession] | None:
        """AUTH (RFC 5034): without arguments the mechanism list, else a PLAIN login."""
        if not args:
            await self.send(b"+OK\r\nPLAIN\r\n.\r\n")
            return None
        self.require_tls()
        if args[0].upper() != "PLAIN":
            raise UserError("Unsupported authentication mechanism.", pop3_code="AUTH")
        response = decode_initial_response(args[1]) if len(args) == 2 else await self.sasl_response()
        authzid, user, password = decode_sasl_plain(response)
        if authzid and authzid != user:
            raise UserError("Authorization identity must be the user.", pop3_code="AUTH")
        return await self.proxy.login(user, password, "pop3", self.client, self.local)

    async def sasl_response(self) -> bytes:
        """Ask for the PLAIN response and return it decoded; `CommandSyntaxError` when cancelled or too long."""
        await self.send(b"+ \r\n")
        line = await self.line()
        if isinstance(line, LineTooLong):
            raise CommandSyntaxError("Line too long.")
        data = parse_sasl_line(line)
        if data is None:
            raise CommandSyntaxError("Authentication cancelled.")
        return data

    async def after_login(self, routed: Routed[BackendSession]) -> None:
        """Confirm the login, then relay until either side ends; the backend session is closed either way."""
        try:
            await self.send(b"+OK Logged in.\r\n")
            leftover = self.reader.unconsumed()
            send_timeout = self.proxy.limits.relay_send_timeout
            if routed.destination == "notice":
                await relay_read_only_pop3(self.stream, routed.session, leftover, send_timeout)
            elif routed.destination == "old":
                with self.proxy.old_relays.holding(routed.login, "pop3") as held:
                    await relay_pop3_until_moved(self.stream, routed.session, leftover, send_timeout,
                                                 lambda: held.moved)
            else:
                await relay(self.stream, routed.session, leftover, send_timeout)
        finally:
            await routed.session.aclose()
