"""One logged-in ManageSieve connection (RFC 5804), blocking; callers run it in a worker thread.

The socket loop is here; every byte the server sends is parsed by `protocol.SieveReader`.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl

from mailmigrator.adapters.mail.connection import (
    SOCKET_TIMEOUT,
    LoginPlan,
    LoginRefused,
    MailConnectionError,
    ServerAddress,
    TransientFailure,
    login_failure,
    tls_context,
)
from mailmigrator.adapters.mail.credentials import UnsendableCredentials, sasl_plain
from mailmigrator.adapters.sieve.protocol import (
    Response,
    SieveLimits,
    SieveReader,
    Token,
    capabilities,
    command,
    put_script_command,
    script_body,
    script_listing,
)

DEFAULT_MANAGESIEVE_PORT = 4190


class SieveNotOffered(MailConnectionError):
    """Nothing listens on the ManageSieve port: the server does not offer it."""


class SieveCommandRefused(MailConnectionError):
    """The server answered NO to a command other than the login; the message is its reason."""

    def __init__(self, what: str, response: Response) -> None:
        code = f" [{response.code}]" if response.code else ""
        super().__init__(f"{what}: {response.text or 'refused'}{code}")
        self.reason = response.text or "refused"
        self.code = response.code


class ManageSieve:
    """A ManageSieve session: TLS per `address.tls` (STARTTLS; "direct" requires it), AUTHENTICATE PLAIN per `plan`."""

    def __init__(self, address: ServerAddress, plan: LoginPlan, limits: SieveLimits | None = None) -> None:
        self.address = address
        self.plan = plan
        self.reader = SieveReader(limits or SieveLimits())
        try:
            self.sock: socket.socket | ssl.SSLSocket = socket.create_connection((address.host, address.port),
                                                                                timeout=SOCKET_TIMEOUT)
        except ConnectionRefusedError:
            raise SieveNotOffered(f"ManageSieve on {address}: connection refused (not offered)") from None
        try:
            self.capabilities = capabilities(self.response("greeting").lines)
            self._secure()
            self._authenticate()
        except BaseException:
            self.close()
            raise

    def _secure(self) -> None:
        if self.address.tls == "disable":
            return
        if "STARTTLS" not in self.capabilities:
            if self.address.tls == "direct":
                raise MailConnectionError(f"ManageSieve on {self.address} offers no STARTTLS; TLS is required")
            return
        self.call("STARTTLS", command("STARTTLS"))
        self.sock = tls_context(self.address).wrap_socket(self.sock, server_hostname=self.address.host)
        # RFC 5804 section 2.2: the server sends its capabilities again after the handshake; the old ones are void.
        self.capabilities = capabilities(self.response("capabilities after STARTTLS").lines)

    def _authenticate(self) -> None:
        """AUTHENTICATE "PLAIN" with the initial response (RFC 5804 section 2.1, RFC 4616); authzid per `plan`."""
        if "PLAIN" not in self.capabilities.get("SASL", "").upper().split():
            raise LoginRefused(f"ManageSieve login {self.plan.describe()}: the server offers no SASL PLAIN")
        authcid, authzid = self.plan.identities()
        try:
            message = sasl_plain(authcid, self.plan.credentials.password, authzid)
        except UnsendableCredentials as e:
            raise LoginRefused(f"ManageSieve login {self.plan.describe()}: {e}") from None
        self.send(command("AUTHENTICATE", "PLAIN", base64.b64encode(message)))
        answer = self.response("AUTHENTICATE")
        if not answer.ok:
            # Never the reply text: a server may echo what was sent. Only the code (e.g. TRYLATER) is kept.
            raise login_failure(self.plan, f"[{answer.code}]" if answer.code else "",
                                transient=answer.code.upper().startswith("TRYLATER"))

    def list_scripts(self) -> list[tuple[str, bool]]:
        return script_listing(self.call("LISTSCRIPTS", command("LISTSCRIPTS")))

    def get_script(self, name: str) -> bytes:
        return script_body(self.call(f"GETSCRIPT {name!r}", command("GETSCRIPT", name)))

    def put_script(self, name: str, content: bytes) -> Response:
        """PUTSCRIPT with the script as a non-synchronising literal; the response as it is (NO: refused)."""
        self.send(put_script_command(name, content))
        return self.response(f"PUTSCRIPT {name!r}")

    def set_active(self, name: str) -> None:
        self.call(f"SETACTIVE {name!r}", command("SETACTIVE", name))

    def call(self, what: str, line: bytes) -> Response:
        """Send one command and wait for its OK; NO raises `SieveCommandRefused`."""
        self.send(line)
        answer = self.response(what)
        if not answer.ok:
            raise SieveCommandRefused(f"ManageSieve {what}", answer)
        return answer

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, what: str) -> Response:
        """Read until OK/NO/BYE; BYE (the server is going away) raises `TransientFailure`."""
        lines: list[tuple[Token, ...]] = []
        while (answer := self.reader.next_response(lines)) is None:
            data = self.sock.recv(65536)
            if not data:
                raise TransientFailure(f"ManageSieve on {self.address} closed the connection during {what}")
            self.reader.feed(data)
        if answer.status == "BYE":
            raise TransientFailure(f"ManageSieve on {self.address} said BYE during {what}: {answer.text[:200]}")
        return answer

    def close(self) -> None:
        """LOGOUT when possible, then close the socket; never raises."""
        with contextlib.suppress(Exception):
            self.sock.settimeout(5)
            self.send(command("LOGOUT"))
            self.response("LOGOUT")
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> ManageSieve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

