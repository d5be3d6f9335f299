"""The relays this node holds open to the old server, by login: what an account's switch closes.

An IMAP relay is cancelled and its client told `* BYE` (RFC 3501 section
7.1.5), so that it reconnects and lands on the new server. A POP3 relay is
flagged and ends at the client's next command (`relay.relay_pop3_until_moved`),
so that a download in progress is not cut; without QUIT the old server
deletes nothing (RFC 1939 section 6).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from mailmigrator.domain.routing import MailProtocol


@dataclass(eq=False)
class OldServerRelay:
    """One client's relay to the old server."""

    login: str
    protocol: MailProtocol
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    moved: bool = False


class OpenRelays:
    """The node's open relays to the old server; implements the `ClientSessions` port."""

    def __init__(self) -> None:
        self._by_login: dict[str, set[OldServerRelay]] = {}

    @contextlib.contextmanager
    def holding(self, login: str, protocol: MailProtocol) -> Iterator[OldServerRelay]:
        """Register a relay for the `with` block; an IMAP relay runs inside its cancel scope."""
        relay = OldServerRelay(login, protocol)
        self._by_login.setdefault(login, set()).add(relay)
        try:
            with relay.scope:
                yield relay
        finally:
            held = self._by_login.get(login)
            if held is not None:
                held.discard(relay)
                if not held:
                    del self._by_login[login]

    async def close_old_sessions(self, login: str) -> int:
        """End `login`'s relays to the old server; how many there were."""
        relays = [r for r in self._by_login.get(login, ()) if not r.moved]
        for relay in relays:
            relay.moved = True
            if relay.protocol == "imap":
                relay.scope.cancel()
        return len(relays)

    def open_logins(self) -> list[str]:
        """The logins with a relay to the old server still open here."""
        return sorted(login for login, relays in self._by_login.items() if any(not r.moved for r in relays))

    def count(self) -> int:
        return sum(len(relays) for relays in self._by_login.values())
