"""Log in to a backend IMAP or POP3 server (old or new) over trio, for the proxy.

The proxy logs in itself and then relays bytes; these functions stop right
after a successful login and hand back the open stream. A backend that does
not answer, or answers with a temporary failure, raises `BackendUnavailable`;
credentials the backend refuses raise `BackendRejected`.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
import re
import ssl
from dataclasses import dataclass, field

import trio

from mailmigrator.domain.credentials import Credentials
from mailmigrator.adapters.mail.credentials import UnsendableCredentials, credential_bytes, sasl_plain
from mailmigrator.adapters.proxy.imap_protocol import quote
from mailmigrator.domain.errors import ExplainedError
from mailmigrator.domain.use_cases.ports import BackendDown, BackendRefused

CONNECT_TIMEOUT = 10.0
RESPONSE_TIMEOUT = 30.0
MAX_RESPONSE_LINE = 64 * 1024

# RFC 5530 codes that say "not now" rather than "not you".
_TEMPORARY_IMAP_CODES = {"UNAVAILABLE", "SERVERBUG", "LIMIT", "INUSE", "CONTACTADMIN", "OVERQUOTA"}
_TEMPORARY_POP3_CODES = {"SYS/TEMP", "IN-USE", "LOGIN-DELAY"}
_CODE = re.compile(r"\[([A-Z0-9/_-]+)(?: ([^\]]*))?\]")


class BackendError(ExplainedError):
    """A backend login did not succeed."""


class BackendUnavailable(BackendError, BackendDown):
    """The backend is down or said "try later"; nothing about the user is known."""


class BackendRejected(BackendError, BackendRefused):
    """The backend refused the credentials."""


@dataclass(frozen=True)
class BackendAddress:
    """Where a backend listens and how to reach it."""

    host: str
    port: int
    tls: str = "disable"  # disable | direct | detect | starttls
    ssl_context: ssl.SSLContext | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class BackendSession:
    """A logged-in backend connection; `pending` holds bytes read past the login reply."""

    stream: trio.abc.Stream
    capabilities: str = ""
    pending: bytes = b""

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)


@dataclass
class LineStream:
    """Reads CRLF lines from a trio stream, keeping what comes after."""

    stream: trio.abc.Stream
    buffer: bytearray = field(default_factory=bytearray)

    async def line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end]).rstrip(b"\r")
                del self.buffer[: end + 1]
                return line
            if len(self.buffer) > MAX_RESPONSE_LINE:
                raise BackendUnavailable("backend sent an overlong line")
            data = await self.stream.receive_some(65536)
            if not data:
                raise BackendUnavailable("backend closed the connection")
            self.buffer += data

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)


async def _connect(address: BackendAddress) -> trio.abc.Stream:
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            stream: trio.abc.Stream = await trio.open_tcp_stream(address.host, address.port)
            if address.tls == "direct":
                stream = await _wrap(stream, address)
    except (OSError, trio.TooSlowError, ssl.SSLError, trio.BrokenResourceError) as e:
        raise BackendUnavailable(f"cannot connect to {address}: {type(e).__name__}") from None
    return stream


async def _wrap(stream: trio.abc.Stream, address: BackendAddress) -> trio.SSLStream[trio.abc.Stream]:
    context = address.ssl_context or ssl.create_default_context()
    tls = trio.SSLStream(stream, context, server_hostname=address.host)
    await tls.do_handshake()
    return tls


LoginDialogue = Callable[[trio.abc.Stream, BackendAddress, str, str], Awaitable[BackendSession]]


async def _log_in(dialogue: LoginDialogue, address: BackendAddress, login: str, password: str) -> BackendSession:
    """Connect and run one login dialogue within the response timeout; the stream is closed on any failure."""
    stream = await _connect(address)
    try:
        with trio.fail_after(RESPONSE_TIMEOUT):
            return await dialogue(stream, address, login, password)
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise BackendUnavailable(f"{address} did not answer in time") from None
    except (OSError, trio.BrokenResourceError, ssl.SSLError) as e:
        await trio.aclose_forcefully(stream)
        raise BackendUnavailable(f"connection to {address} failed: {type(e).__name__}") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def imap_login(address: BackendAddress, login: str, password: str) -> BackendSession:
    """Connect, optionally STARTTLS, log in; return the session with the post-login CAPABILITY."""
    return await _log_in(_imap_login, address, login, password)


async def _imap_login(stream: trio.abc.Stream, address: BackendAddress, login: str, password: str) -> BackendSession:
    lines = LineStream(stream)
    greeting = (await lines.line()).decode("utf-8", "replace")
    if not greeting.upper().startswith("* OK"):
        raise BackendUnavailable(f"{address} greeted with something other than OK")
    caps = _capability_from(greeting) or await _imap_capability(lines, "m0")
    if address.tls in ("detect", "starttls"):
        if "STARTTLS" in caps.upper().split():
            await lines.send(b"m1 STARTTLS\r\n")
            reply = await _imap_tagged(lines, "m1")
            if not reply[0].upper().startswith("OK"):
                raise BackendUnavailable(f"{address} refused STARTTLS")
            stream = await _wrap(stream, address)
            lines = LineStream(stream)
            caps = await _imap_capability(lines, "m1c")  # RFC 3501 section 6.2.1: ask again after TLS
        elif address.tls == "starttls":
            raise BackendUnavailable(f"{address} does not offer STARTTLS")
    await _imap_send_login(lines, caps.upper().split(), login, password)
    status, untagged = await _imap_tagged(lines, "m2")
    word, _, rest = status.partition(" ")
    if word.upper() != "OK":
        codes = {m.group(1).upper() for m in _CODE.finditer(rest)}
        if word.upper() == "NO" and not codes & _TEMPORARY_IMAP_CODES:
            raise BackendRejected(f"{address} refused the login")
        raise BackendUnavailable(f"{address} cannot log in now ({', '.join(sorted(codes)) or word})")
    caps = _capability_from(status)
    for line in untagged:
        if line.upper().startswith("* CAPABILITY "):
            caps = line[len("* CAPABILITY "):]
    if not caps:
        caps = await _imap_capability(lines, "m3")
    return BackendSession(lines.stream, caps.strip(), bytes(lines.buffer))


async def _imap_send_login(lines: LineStream, caps: list[str], login: str, password: str) -> None:
    """The IMAP login as the copy engine sends it: AUTHENTICATE PLAIN when offered, else LOGIN; UTF-8 throughout.

    Credentials are never logged; LOGIN carries 8-bit strings as non-synchronising literals.
    """
    message = _plain_response(login, password)
    if "AUTH=PLAIN" not in caps:
        await lines.send(b"m2 LOGIN " + quote(login) + b" " + quote(password) + b"\r\n")
    elif "SASL-IR" in caps:  # RFC 4959
        await lines.send(b"m2 AUTHENTICATE PLAIN " + message + b"\r\n")
    else:
        await lines.send(b"m2 AUTHENTICATE PLAIN\r\n")
        if not (await lines.line()).startswith(b"+"):
            raise BackendUnavailable("backend did not accept AUTHENTICATE PLAIN")
        await lines.send(message + b"\r\n")


def _plain_response(login: str, password: str) -> bytes:
    """The base64 RFC 4616 PLAIN message; also refuses NUL, CR and LF before anything is sent."""
    try:
        return base64.b64encode(sasl_plain(login, password))
    except UnsendableCredentials as e:
        raise BackendRejected(str(e)) from None


async def _imap_capability(lines: LineStream, tag: str) -> str:
    await lines.send(tag.encode() + b" CAPABILITY\r\n")
    status, untagged = await _imap_tagged(lines, tag)
    for line in untagged:
        if line.upper().startswith("* CAPABILITY "):
            return line[len("* CAPABILITY "):]
    return ""


async def _imap_tagged(lines: LineStream, tag: str) -> tuple[str, list[str]]:
    """Read to the tagged reply; return its text after the tag, and the untagged lines."""
    untagged: list[str] = []
    prefix = tag + " "
    while True:
        line = (await lines.line()).decode("utf-8", "replace")
        if line.startswith(prefix):
            return line[len(prefix):], untagged
        if line.upper().startswith("* BYE"):
            raise BackendUnavailable("backend said BYE")
        untagged.append(line)


def _capability_from(line: str) -> str:
    for match in _CODE.finditer(line):
        if match.group(1).upper() == "CAPABILITY":
            return match.group(2) or ""
    return ""


async def pop3_login(address: BackendAddress, login: str, password: str) -> BackendSession:
    """Connect, optionally STLS, then USER/PASS (RFC 1939) or AUTH PLAIN when PASS is not offered."""
    return await _log_in(_pop3_login, address, login, password)


async def _pop3_login(stream: trio.abc.Stream, address: BackendAddress, login: str, password: str) -> BackendSession:
    lines = LineStream(stream)
    if not (await lines.line()).startswith(b"+OK"):
        raise BackendUnavailable(f"{address} greeted with -ERR")
    if address.tls in ("detect", "starttls"):
        await lines.send(b"STLS\r\n")
        reply = await lines.line()
        if reply.startswith(b"+OK"):
            stream = await _wrap(stream, address)
            lines = LineStream(stream)
        elif address.tls == "starttls":
            raise BackendUnavailable(f"{address} does not offer STLS")
    response = _plain_response(login, password)
    await lines.send(b"AUTH PLAIN " + response + b"\r\n")
    reply = await lines.line()
    if reply.startswith(b"+ "):
        await lines.send(response + b"\r\n")
        reply = await lines.line()
    if not reply.startswith(b"+OK"):
        if reply.startswith(b"-ERR"):
            codes = {m.group(1).upper() for m in _CODE.finditer(reply.decode("utf-8", "replace"))}
            if codes & _TEMPORARY_POP3_CODES:
                raise BackendUnavailable(f"{address} cannot log in now ({', '.join(sorted(codes))})")
            if not codes and b"AUTH" not in reply.upper():
                # Servers without AUTH PLAIN: fall back to USER/PASS.
                return await _pop3_user_pass(lines, address, login, password)
        raise BackendRejected(f"{address} refused the login")
    return BackendSession(lines.stream, "", bytes(lines.buffer))


async def _pop3_user_pass(lines: LineStream, address: BackendAddress, login: str, password: str) -> BackendSession:
    await lines.send(b"USER " + credential_bytes(login) + b"\r\n")
    if not (await lines.line()).startswith(b"+OK"):
        raise BackendRejected(f"{address} refused the user name")
    await lines.send(b"PASS " + credential_bytes(password) + b"\r\n")
    reply = await lines.line()
    if reply.startswith(b"+OK"):
        return BackendSession(lines.stream, "", bytes(lines.buffer))
    codes = {m.group(1).upper() for m in _CODE.finditer(reply.decode("utf-8", "replace"))}
    if codes & _TEMPORARY_POP3_CODES:
        raise BackendUnavailable(f"{address} cannot log in now ({', '.join(sorted(codes))})")
    raise BackendRejected(f"{address} refused the login")


@dataclass
class ServerBackends:
    """The old and new servers as the login router reaches them."""

    old_imap: BackendAddress
    old_pop3: BackendAddress | None
    new_imap: BackendAddress
    new_pop3: BackendAddress | None = None
    master_user: str = ""
    master_password: str = field(default="", repr=False)
    migration_account: str = ""

    async def old(self, protocol: str, credentials: Credentials) -> BackendSession:
        if protocol == "pop3":
            if self.old_pop3 is None:
                raise BackendUnavailable("the old server has no POP3 port configured")
            return await pop3_login(self.old_pop3, credentials.login, credentials.password)
        return await imap_login(self.old_imap, credentials.login, credentials.password)

    async def new(self, protocol: str, credentials: Credentials) -> BackendSession:
        return await self._new(protocol, credentials.login, credentials.password)

    async def notice(self, protocol: str) -> BackendSession:
        if not self.master_user:
            raise BackendUnavailable("[target] master_user is needed to open the migration account")
        return await self._new(protocol, f"{self.migration_account}*{self.master_user}", self.master_password)

    async def _new(self, protocol: str, login: str, password: str) -> BackendSession:
        if protocol == "pop3":
            if self.new_pop3 is None:
                raise BackendUnavailable("the new server has no POP3 port configured")
            return await pop3_login(self.new_pop3, login, password)
        return await imap_login(self.new_imap, login, password)
