"""Opening a logged-in IMAP connection (blocking; callers run it in a worker thread)."""

from __future__ import annotations

import contextlib
import imaplib

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from mailmigrator.adapters.imap_responses import is_transient_response, one_line
from mailmigrator.adapters.mail_connection import (
    SOCKET_TIMEOUT,
    LoginPlan,
    LoginRefused,
    MailConnectionError,
    ServerAddress,
    TransientFailure,
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
    secret = plan.credentials
    try:
        if plan.admin_login == "sasl":
            client.plain_login(secret.login, secret.password, authorization_identity=plan.user)
        elif plan.admin_login == "dovecot-master":
            client.login(f"{plan.user}*{secret.login}", secret.password)
        elif client.has_capability("LOGINDISABLED") and client.has_capability("AUTH=PLAIN"):
            client.plain_login(secret.login, secret.password)
        else:
            client.login(secret.login, secret.password)
    except LoginError as e:
        if is_transient_response(str(e)):
            raise TransientFailure(f"login {plan.describe()}: {one_line(e)}") from None
        raise LoginRefused(f"login {plan.describe()} refused: {one_line(e)}") from None
    except IMAPClientAbortError:
        raise
    except IMAPClientError as e:
        raise LoginRefused(f"login {plan.describe()} refused: {one_line(e)}") from None


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
