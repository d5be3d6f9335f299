"""What every mail connection shares: the address, TLS, who logs in, and which failures are worth a retry."""

from __future__ import annotations

import imaplib
import poplib
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import structlog
from imapclient.exceptions import IMAPClientError

from mailmigrator.adapters.mail.adaptive_limit import overload_sign
from mailmigrator.domain.credentials import Credentials
from mailmigrator.adapters.imap.responses import is_transient_response, one_line
from mailmigrator.domain.errors import ExplainedError

log = structlog.get_logger("mailmigrator.connection")

# A server that answers nothing for this long is treated as gone (retried).
SOCKET_TIMEOUT = 120.0


class MailConnectionError(ExplainedError):
    """A connection or login to a mail server failed; the message is one line without secrets."""


class TransientFailure(MailConnectionError):
    """Worth retrying after a pause: dropped connection, BYE, timeout, UNAVAILABLE, throttling."""


class LoginRefused(MailConnectionError):
    """The server refused the credentials."""


@dataclass(frozen=True)
class ServerAddress:
    """Where a server listens and how to secure the connection."""

    host: str
    port: int
    tls: str = "detect"  # detect | direct | disable
    ca_file: Path | None = None
    verify_certificate: bool = True

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class LoginPlan:
    """Who logs in and how.

    `admin_login` "sasl" sends AUTHENTICATE PLAIN with authorization identity
    `user` (RFC 4616); "dovecot-master" sends LOGIN ``user*admin``; "" logs in
    as the user with `credentials`.
    """

    user: str
    credentials: Credentials
    admin_login: str = ""

    def identities(self) -> tuple[str, str]:
        """(authentication identity, authorization identity) as RFC 4616 names them; "" for no authzid."""
        if self.admin_login == "sasl":
            return self.credentials.login, self.user
        if self.admin_login == "dovecot-master":
            return f"{self.user}*{self.credentials.login}", ""
        return self.credentials.login, ""

    def describe(self) -> str:
        if self.admin_login == "sasl":
            return f"{self.user} (as {self.credentials.login}, SASL)"
        if self.admin_login:
            return f"{self.user} (as master {self.credentials.login})"
        return self.user


# A reply's response code (RFC 5530 for IMAP, RFC 2449/3206 for POP3), the only part of a login reply kept.
_REPLY_CODE = re.compile(r"\[([A-Za-z0-9/._-]{1,40})[\] ]")


def login_failure(plan: LoginPlan, reply: str, *, transient: bool) -> MailConnectionError:
    """A failed login named by who logged in and the reply's code only: a server's text may echo what was sent."""
    match = _REPLY_CODE.search(reply)
    code = f" [{match.group(1).upper()}]" if match else ""
    if transient:
        return TransientFailure(f"login {plan.describe()}: the server cannot log in now{code}")
    return LoginRefused(f"login {plan.describe()} refused{code}")


def tls_context(address: ServerAddress) -> ssl.SSLContext:
    """A client context: system store or `ca_file`; no verification only when configured."""
    context = ssl.create_default_context(cafile=str(address.ca_file) if address.ca_file else None)
    if not address.verify_certificate:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def warn_unverified(address: ServerAddress, section: str) -> None:
    """Log once at start that certificates of `address` will not be checked."""
    if not address.verify_certificate and address.tls != "disable":
        log.warning(
            "certificate verification disabled",
            section=section,
            server=str(address),
            hint="set verify_certificate = true (and ca_file) to protect the login",
        )


def source_login_name(typed: str, login: str, login_format: str) -> str:
    """The name the old server expects: as typed, the full address, or the local part."""
    if login_format == "email":
        return login
    if login_format == "local-part":
        return login.rpartition("@")[0] or login
    return typed


def is_transient(error: BaseException) -> bool:
    """Whether `error` is worth a reconnect and retry."""
    if isinstance(error, TransientFailure):
        return True
    if isinstance(error, MailConnectionError):
        return False
    if isinstance(error, ssl.SSLCertVerificationError):
        return False
    # An overloaded server ("* BYE Maximum number of connections", [UNAVAILABLE], a backoff
    # request) is asked again later; [LIMIT] is about one message's size, so it is final.
    sign = overload_sign(error)
    if sign is not None and sign != "limit":
        return True
    if isinstance(error, (imaplib.IMAP4.abort, EOFError, socket.timeout, ConnectionError, ssl.SSLError)):
        return True
    if isinstance(error, OSError):
        return True
    if isinstance(error, poplib.error_proto):
        text = str(error)
        return "[IN-USE]" in text or "[SYS/TEMP]" in text or is_transient_response(text)
    if isinstance(error, imaplib.IMAP4.error):
        return is_transient_response(str(error))
    return False


def describe_error(error: BaseException) -> str:
    """One line naming what went wrong, for events, logs and the terminal: the one place that turns errors into text.

    Only messages this program wrote (`ExplainedError`) and server replies to commands other
    than a login are quoted; every other error gets a fixed description, because its text may
    be built from what was sent, credentials included (a UnicodeEncodeError names the character).
    """
    if isinstance(error, ExplainedError):
        text = str(error)
    elif isinstance(error, ssl.SSLCertVerificationError):
        text = f"certificate rejected: {error.verify_message or error.reason}; set ca_file to the server's CA"
    elif isinstance(error, socket.timeout):
        text = "timed out waiting for the server"
    elif isinstance(error, ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(error, ssl.SSLError):
        text = f"TLS failed: {error.reason or type(error).__name__}"
    elif isinstance(error, OSError):
        text = f"connection failed: {error.strerror or type(error).__name__}"
    elif isinstance(error, EOFError):
        text = "the server closed the connection"
    elif isinstance(error, UnicodeError):
        text = "text could not be encoded for the server"
    elif isinstance(error, (imaplib.IMAP4.error, poplib.error_proto, IMAPClientError)):
        # Logins never let these out (see `login_failure`): these are replies to mail commands.
        text = str(error)
    else:
        text = f"unexpected error ({type(error).__name__})"
    return one_line(text or type(error).__name__, 300)
