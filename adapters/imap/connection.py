"""Opening a logged-in IMAP connection (blocking; callers run it in a worker thread)."""

from __future__ import annotations

import contextlib
import imaplib

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from mailmigrator.adapters.imap.responses import is_transient_response, one_line
from mailmigrator.adapters.mail.credentials import UnsendableCredentials, credential_bytes, sasl_plain
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
from mailmigrator.domain.folders import ListedFolder, Namespace

# Folder names on both sides hold the whole Unicode range; imapclient does the
# modified UTF-7 (RFC 3501 section 5.1.3) in both directions.


def open_imap(address: ServerAddress, plan: LoginPlan) -> IMAPClient:
    """A logged-in client; TLS per `address.tls`, login per `plan`."""
    # Loading the system CA store costs tens of milliseconds: only when TLS can happen.
    context = tls_context(address) if address.tls != "disable" else None
    client = IMAPClient(
        address.host, address.port, ssl=address.tls == "direct", ssl_context=context, timeout=SOCKET_TIMEOUT
    )
    try:
        if context is not None and address.tls == "detect" and client.has_capability("STARTTLS"):
            # RFC 3501 section 6.2.1: imapclient forgets pre-TLS capabilities itself.
            client.starttls(context)
        _login(client, plan)
    except BaseException:
        with contextlib.suppress(Exception):
            client.shutdown()
        raise
    client.normalise_times = False
    return client


def _login(client: IMAPClient, plan: LoginPlan) -> None:
    """The one IMAP login: AUTHENTICATE PLAIN when offered, else LOGIN; names and password as UTF-8.

    PLAIN (RFC 4616) carries UTF-8 by definition and is the only way to send an
    authorization identity; LOGIN sends each string quoted, or as a literal when it
    holds 8-bit bytes (RFC 3501 section 4.3; imaplib's own LOGIN would encode ASCII).
    A failure names who logged in and the reply's code, never the reply itself.
    """
    authcid, authzid = plan.identities()
    password = plan.credentials.password
    try:
        if client.has_capability("AUTH=PLAIN"):
            message = sasl_plain(authcid, password, authzid)
            client.sasl_login("PLAIN", lambda _challenge: message)
        elif authzid or client.has_capability("LOGINDISABLED"):
            raise LoginRefused(f"login {plan.describe()}: the server offers no AUTHENTICATE PLAIN")
        else:
            _send_login(client, credential_bytes(authcid), credential_bytes(password))
    except UnsendableCredentials as e:
        raise LoginRefused(f"login {plan.describe()}: {e}") from None
    except IMAPClientAbortError:
        raise  # the connection broke (or BYE): retried, and its text feeds the overload limiter
    except IMAPClientError as e:
        raise login_failure(plan, str(e), transient=is_transient_response(str(e))) from None


def _send_login(client: IMAPClient, login: bytes, password: bytes) -> None:
    # imapclient's command writer sends 8-bit arguments as literals (waiting for "+" unless LITERAL+).
    status, data = client._raw_command(b"LOGIN", [_login_string(login), _login_string(password)], uid=False)
    if status != "OK":
        raise LoginError(one_line(b" ".join(d for d in data if isinstance(d, bytes))))
    client._imap.state = "AUTH"  # what imaplib's own login() records; the raw command bypasses it


def _login_string(data: bytes) -> bytes:
    """A quoted string for 7-bit `data`; 8-bit data is left for the caller's literal."""
    if any(b >= 0x80 for b in data):
        return data
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def close_imap(client: IMAPClient | None) -> None:
    """Log out politely, or just drop the connection when it is already broken."""
    if client is None:
        return
    try:
        client.logout()
    except Exception:  # noqa: BLE001 - the connection is being discarded either way
        with contextlib.suppress(Exception):
            client.shutdown()


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def namespace_of(client: IMAPClient) -> Namespace:
    """The personal namespace (RFC 2342), else the separator LIST reports and no prefix."""
    if client.has_capability("NAMESPACE"):
        personal = client.namespace().personal
        if personal:
            prefix, separator = personal[0]
            return Namespace(_text(prefix), _text(separator or ""))
    listed = client.list_folders("", "")
    separator = listed[0][1] if listed else b"/"
    return Namespace("", _text(separator or ""))


def listed_folders(client: IMAPClient) -> list[ListedFolder]:
    """Every folder with its attributes and whether it is subscribed."""
    subscribed = {_text(name) for _, _, name in client.list_sub_folders()}
    folders = []
    for flags, _, name in client.list_folders():
        name = _text(name)
        folders.append(ListedFolder(name, frozenset(_text(f) for f in flags), name in subscribed))
    return folders


def imap_failure(error: IMAPClientError, what: str) -> MailConnectionError:
    """A NO/BAD reply as transient or final, named after what was attempted."""
    if isinstance(error, (IMAPClientAbortError, imaplib.IMAP4.abort)):
        return TransientFailure(f"{what}: connection lost: {one_line(error)}")
    if is_transient_response(str(error)):
        return TransientFailure(f"{what}: {one_line(error)}")
    return MailConnectionError(f"{what}: {one_line(error)}")
