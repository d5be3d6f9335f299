"""What every mail connection shares: the address, TLS, who logs in, and which failures are worth a retry."""

from __future__ import annotations

import imaplib
import poplib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import structlog

from mailmigrator.adapters.adaptive_limit import overload_sign
from mailmigrator.adapters.credentials import Credentials
from mailmigrator.adapters.imap_responses import is_transient_response

log = structlog.get_logger("mailmigrator.connection")

# A server that answers nothing for this long is treated as gone (retried).
SOCKET_TIMEOUT = 120.0


class MailConnectionError(Exception):
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

    def describe(self) -> str:
        if self.admin_login == "sasl":
            return f"{self.user} (as {self.credentials.login}, SASL)"
        if self.admin_login:
            return f"{self.user} (as master {self.credentials.login})"
        return self.user


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
    """One line naming what went wrong, for events and the terminal."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate rejected: {error.verify_message or error.reason}; set ca_file to the server's CA"
    if isinstance(error, socket.timeout):
        return "timed out waiting for the server"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
