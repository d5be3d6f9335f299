"""One IMAP client before login: the proxy answers it itself until LOGIN or AUTHENTICATE succeeds, then relays."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import trio

from mailmigrator.adapters.proxy.imap_protocol import (
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
from mailmigrator.adapters.proxy.pre_auth_session import PreAuthSession
from mailmigrator.adapters.proxy.protocol_errors import CommandSyntaxError, ProtocolError, UserError, imap_reply
from mailmigrator.adapters.proxy.relay import relay, relay_read_only_imap

if TYPE_CHECKING:
    from mailmigrator.adapters.proxy.listeners import LoginProxy
    from mailmigrator.adapters.proxy.backends import BackendSession
    from mailmigrator.domain.use_cases.first_login import Routed

# Capabilities the migration account does not get: it is read-only and gets no push.
_NOTICE_WITHHELD_CAPABILITIES = ("IDLE", "NOTIFY")


MOVED_BYE = b"* BYE [UNAVAILABLE] Your mailbox has moved to the new server; please connect again.\r\n"


class SaslCancelled(Exception):
    """The client answered a SASL challenge with `*`."""


class ImapSession(PreAuthSession):
    """One IMAP client before login (RFC 3501 section 6.1-6.2, RFC 9051 section 6.1-6.2)."""

    __slots__ = ("reader",)

    def __init__(
        self, proxy: LoginProxy, stream: trio.abc.Stream, client: str, local: str, tls: bool, login_deadline: float
    ) -> None:
        super().__init__(proxy, stream, client, local, tls, login_deadline)
        limits = proxy.limits
        self.reader = ImapCommandReader(max_line=limits.max_line, max_literal=limits.max_literal)

    async def event(self) -> object:
        """The reader's next event, receiving from the client until there is one."""
        while (event := self.reader.next_event()) is None:
            self.reader.receive(await self.receive())
        return event

    def capabilities(self) -> str:
        """The pre-login CAPABILITY list, as this connection stands."""
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE"]
        if self.offers_tls:
            caps.append("STARTTLS")
        if not self.may_log_in:
            caps.append("LOGINDISABLED")  # RFC 3501 section 6.2.3: no AUTH= either
        else:
            caps += ["AUTH=PLAIN", "AUTH=LOGIN"]
        return " ".join(caps)

    def greeting(self) -> bytes:
        return f"* OK [CAPABILITY {self.capabilities()}] Mail service ready.\r\n".encode()

    def farewell(self, reason: str) -> bytes:
        return f"* BYE {reason}\r\n".encode()

    async def answer_next(self) -> bool:
        """Answer the client's next input; False after LOGOUT, fatal input, or a login once its relay has ended."""
        event = await self.event()
        if isinstance(event, ContinuationNeeded):
            await self.send(b"+ Ready for literal data\r\n")
            return True
        if isinstance(event, InputRefused):
            return await self.refuse(event)
        assert isinstance(event, Framed)
        return await self.answer_command(event)

    async def refuse(self, refused: InputRefused) -> bool:
        """Tell the client what was refused; False when the input cannot be followed any further."""
        await self.send(imap_reply(refused.tag, refused.error))
        if refused.error.fatal:
            await self.send(b"* BYE Input too large.\r\n")
            return False
        return True

    async def answer_command(self, framed: Framed) -> bool:
        """Run one command; False after LOGOUT, and after a login once its relay has ended."""
        try:
            command = parse_command(framed)
        except CommandSyntaxError as e:
            await self.send(imap_reply(getattr(e, "tag", "*"), e))
            return True
        routed = await self.dispatch(command)
        if routed is None:
            return command.name != "LOGOUT"
        await self.after_login(command.tag, routed)
        return False

    async def dispatch(self, command: Command) -> Routed[BackendSession] | None:
        """Answer a command allowed before login; the routed backend when it was a successful login."""
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
        if not self.offers_tls:
            await self.send(f"{tag} BAD TLS is not available here.\r\n".encode())
            return
        await self.send(f"{tag} OK Begin TLS negotiation now.\r\n".encode())
        # RFC 3501 section 6.2.1 (and RFC 2595 section 3.1): anything the client
        # pipelined after STARTTLS in clear text is dropped, not obeyed.
        self.reader = ImapCommandReader(max_line=self.reader.max_line, max_literal=self.reader.max_literal)
        await self.start_tls()

    async def authenticate(self, command: Command) -> Routed[BackendSession] | None:
        """AUTHENTICATE PLAIN or LOGIN (RFC 3501 section 6.2.2); a failed exchange is answered here."""
        tag = command.tag
        mechanism = str(command.args[0]).upper()
        try:
            user, password = await self.sasl_credentials(mechanism, command.args[1:])
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

    async def sasl_credentials(self, mechanism: str, initial: tuple[object, ...]) -> tuple[str, str]:
        """(user, password) from the SASL exchange of `mechanism`; `initial` holds a SASL-IR response, if sent."""
        if not self.may_log_in:
            raise UserError("Log in after STARTTLS.", "PRIVACYREQUIRED")
        if mechanism == "PLAIN":
            response = decode_initial_response(str(initial[0])) if len(initial) == 1 else await self.sasl_step(b"")
            authzid, user, password = decode_sasl_plain(response)
            if authzid and authzid != user:
                raise UserError("Authorization identity must be the user.", "AUTHORIZATIONFAILED")
            return user, password
        if mechanism == "LOGIN":
            user = (await self.sasl_step(b"Username:")).decode("utf-8")
            password = (await self.sasl_step(b"Password:")).decode("utf-8")
            return user, password
        raise UserError("Unsupported authentication mechanism.", "CANNOT")

    async def sasl_step(self, challenge: bytes) -> bytes:
        """Send one SASL challenge and return the client's decoded response; `SaslCancelled` on `*`."""
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
        """Log in through the proxy; a refusal is answered here and gives None."""
        if not self.may_log_in:
            await self.send(f"{tag} NO [PRIVACYREQUIRED] Log in after STARTTLS.\r\n".encode())
            return None
        try:
            return await self.proxy.login(user, password, "imap", self.client, self.local)
        except ProtocolError as e:
            await self.send(imap_reply(tag, e))
            return None

    async def after_login(self, tag: str, routed: Routed[BackendSession]) -> None:
        """Confirm the login with the backend's capabilities, then relay until either side ends."""
        session = routed.session
        try:
            caps = session.capabilities
            if routed.destination == "notice":
                caps = " ".join(c for c in caps.split() if c.upper() not in _NOTICE_WITHHELD_CAPABILITIES)
            # RFC 3501 section 7.1: a CAPABILITY response code on the tagged OK tells
            # the client the backend's post-login capabilities.
            await self.send(f"{tag} OK [CAPABILITY {caps}] Logged in.\r\n".encode())
            # Whatever the client pipelined after the login command, byte for byte.
            leftover = self.reader.unconsumed()
            send_timeout = self.proxy.limits.relay_send_timeout
            if routed.destination == "notice":
                await relay_read_only_imap(self.stream, session, leftover, self.reader, send_timeout)
            elif routed.destination == "old":
                await self.relay_until_moved(routed, leftover, send_timeout)
            else:
                await relay(self.stream, session, leftover, send_timeout)
        finally:
            await session.aclose()

    async def relay_until_moved(self, routed: Routed[BackendSession], leftover: bytes, send_timeout: float) -> None:
        """Relay to the old server until either side ends, or the account's switch closes the relay."""
        with self.proxy.old_relays.holding(routed.login, "imap") as held:
            await relay(self.stream, routed.session, leftover, send_timeout)
        if held.moved:
            # RFC 3501 section 7.1.5: BYE, then the server closes the connection.
            with trio.move_on_after(send_timeout):
                await self.stream.send_all(MOVED_BYE)
