"""Reading the old server over POP3 (RFC 1939; blocking, run in a worker thread).

POP3 has one folder, the INBOX, and no flags: everything arrives unread.
Messages are told apart by UIDL (a UIDL seen twice is copied once), and the
INTERNALDATE comes from the message's own Received:/Date: headers.
"""

from __future__ import annotations

import base64
import contextlib
import poplib
from collections.abc import Sequence

from mailmigrator.adapters.mail.credentials import UnsendableCredentials, credential_bytes, sasl_plain
from mailmigrator.adapters.mail.connection import (
    SOCKET_TIMEOUT,
    LoginPlan,
    LoginRefused,
    ServerAddress,
    login_failure,
    tls_context,
)
from mailmigrator.adapters.mail.message_source import FetchedMessage, FolderListing, SourceMessage
from mailmigrator.domain.fingerprint import received_date
from mailmigrator.domain.folders import ListedFolder, Namespace

# poplib refuses lines over 2048 bytes; RFC 1939 allows 512 but real mail has longer.
setattr(poplib, "_MAXLINE", 1 << 20)  # the module's only knob for it


def _parse_listing(lines: Sequence[bytes]) -> list[tuple[int, str]]:
    """UIDL or LIST lines ("1 abc") as (number, value)."""
    out = []
    for line in lines:
        number, _, value = line.decode("ascii", "replace").strip().partition(" ")
        if number.isdigit():
            out.append((int(number), value.strip()))
    return out


def unique_by_uidl(uidls: Sequence[tuple[int, str]], sizes: dict[int, int]) -> list[SourceMessage]:
    """One SourceMessage per distinct UIDL, the first occurrence kept, in maildrop order."""
    seen: set[str] = set()
    out = []
    for number, uidl in uidls:
        if uidl in seen:
            continue
        seen.add(uidl)
        out.append(SourceMessage(number, sizes.get(number, 0), uidl))
    return out


class Pop3Source:
    """A logged-in POP3 connection to the old server; nothing is ever deleted."""

    def __init__(self, address: ServerAddress, plan: LoginPlan) -> None:
        self.address = address
        context = tls_context(address)
        if address.tls == "direct":
            self.pop: poplib.POP3 = poplib.POP3_SSL(address.host, address.port, context=context, timeout=SOCKET_TIMEOUT)
        else:
            self.pop = poplib.POP3(address.host, address.port, timeout=SOCKET_TIMEOUT)
        try:
            if address.tls == "detect" and "STLS" in self._capabilities():
                self.pop.stls(context)  # RFC 2595 section 4
            self._login(plan)
        except BaseException:
            self.close()
            raise

    def _capabilities(self) -> dict[str, list[str]]:
        try:
            return self.pop.capa()
        except poplib.error_proto:
            return {}

    def _login(self, plan: LoginPlan) -> None:
        """The one POP3 login: AUTH PLAIN for an authorization identity, else USER/PASS; all UTF-8.

        poplib writes commands as UTF-8; the names and password are checked for NUL, CR and LF
        first, so none can end a command early. A failure names who logged in and the reply's
        code, never the reply.
        """
        authcid, authzid = plan.identities()
        password = plan.credentials.password
        try:
            if authzid:
                # RFC 5034 AUTH with an initial response; RFC 4616 PLAIN with authorization identity.
                token = base64.b64encode(sasl_plain(authcid, password, authzid)).decode("ascii")
                getattr(self.pop, "_shortcmd")(f"AUTH PLAIN {token}")  # poplib has no AUTH command
            else:
                self.pop.user(credential_bytes(authcid).decode("utf-8"))
                self.pop.pass_(credential_bytes(password).decode("utf-8"))
        except UnsendableCredentials as e:
            raise LoginRefused(f"POP3 login {plan.describe()}: {e}") from None
        except poplib.error_proto as e:
            text = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
            raise login_failure(plan, text, transient="[IN-USE]" in text or "[SYS/TEMP]" in text) from None

    def namespace(self) -> Namespace:
        return Namespace("", "")

    def list_folders(self) -> list[ListedFolder]:
        return [ListedFolder("INBOX", frozenset(), subscribed=True)]

    def open_folder(self, name: str) -> FolderListing:
        _, uidl_lines, _ = self.pop.uidl()
        _, list_lines, _ = self.pop.list()
        sizes = {number: int(value or 0) for number, value in _parse_listing(list_lines)}
        return FolderListing(0, unique_by_uidl(_parse_listing(uidl_lines), sizes), by_uidl=True)

    def fetch(self, messages: Sequence[SourceMessage]) -> list[FetchedMessage]:
        out = []
        for message in messages:
            _, lines, _ = self.pop.retr(message.uid)
            # poplib strips CRLF and dot-stuffing (RFC 1939 section 3); the message ends with CRLF.
            raw = b"\r\n".join(lines) + b"\r\n"
            out.append(FetchedMessage(message.uid, raw, (), received_date(raw), message.uidl))
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pop.quit()
        with contextlib.suppress(Exception):
            self.pop.close()
