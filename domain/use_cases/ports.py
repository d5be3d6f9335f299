"""What the use cases need from the world, as the use cases see it.

Each port is implemented by an adapter (named in its docstring) and handed to
the use cases by the composition root, `mailmigrator.ops.composition`.
Blocking ports are called in worker threads by the use cases.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from mailmigrator.domain.credentials import Credentials
from mailmigrator.domain.filters import FilterReport
from mailmigrator.domain.routing import MailProtocol


class BackendRefused(Exception):
    """Raised by a `Backends` port: the server refused the credentials."""


class BackendDown(Exception):
    """Raised by a `Backends` port: the server cannot be reached or said "not now"."""


class Session(Protocol):
    """A logged-in backend connection the proxy relays to (`adapters.proxy.backends.BackendSession`)."""

    async def aclose(self) -> None: ...


SessionT = TypeVar("SessionT", bound=Session, covariant=True)


class Backends(Protocol[SessionT]):
    """Logged-in sessions on the two servers (`adapters.proxy.backends.ServerBackends`).

    `BackendRefused` means the server refused the credentials, `BackendDown` that it cannot answer now.
    """

    async def old(self, protocol: MailProtocol, credentials: Credentials) -> SessionT: ...

    async def new(self, protocol: MailProtocol, credentials: Credentials) -> SessionT: ...

    async def notice(self, protocol: MailProtocol) -> SessionT: ...


class NewAccounts(Protocol):
    """Accounts on the new server (`adapters.accounts.provisioning`)."""

    name: str
    settle_seconds: float

    def create(self, login: str, password: str) -> None: ...

    def exists(self, login: str) -> bool: ...

    def set_password(self, login: str, password: str) -> None: ...

    def prepare(self, login: str) -> bool:
        """Create `login` so that no password opens it (a pre-copy); False when it exists."""
        ...


class CredentialStore(Protocol):
    """Passwords kept for later passes, sealed (`adapters.store.vault.CredentialVault`)."""

    def put(self, login: str, password: str) -> None: ...

    def get(self, login: str) -> str | None: ...

    def destroy(self, login: str) -> bool: ...


class AliasFile(Protocol):
    """The new server's alias map (`adapters.accounts.alias_map.AliasMap`)."""

    def entries(self) -> dict[str, str]: ...

    def add(self, account: str, aliases: list[str]) -> dict[str, str]: ...


class CopyResult(Protocol):
    login: str
    ok: bool
    messages: int
    bytes: int
    skipped: int
    folders: int
    error: str | None
    busy: bool


class MailServers(Protocol):
    """The old and new mail servers as one account's migration uses them (`adapters.mail.servers.MailServers`).

    Blocking; `LoginRefused` for a refused password, `MailConnectionError`/`OSError` when a server cannot answer.
    """

    def source_name(self, typed: str, login: str) -> str: ...

    def check_password(self, typed: str, login: str, password: str) -> None: ...

    def check_target_account(self, target_login: str) -> None: ...

    def recipient_headers(self, source_name: str, login: str, password: str | None) -> list[bytes]: ...


class Progress(Protocol):
    """Counters a batch of migrations shows (`adapters.mail.copier.CopyProgress`)."""

    def count(self, **deltas: int) -> None: ...


class Copier(Protocol):
    """The copy engine (`adapters.mail.servers.AccountCopier` over `adapters.mail.copier.MailboxCopier`, or
    `adapters.dovecot.copier.DsyncCopier`, which keeps the old UIDs and UIDVALIDITY).

    `progress`: the batch's own counters, moved beside the engine's.
    """

    async def copy(self, login: str, source_name: str, password: str | None, target_login: str,
                   progress: Progress | None = None) -> CopyResult: ...


class FilterCopier(Protocol):
    """Sieve scripts over ManageSieve on both servers (`adapters.sieve.servers.SieveServers`). Blocking.

    Lists and reads the scripts on the old server as `copy_plan` logs in there, puts each on the new one
    through the master user and activates the old active one when the new server accepted it. A script the
    new server refuses is in the report with its reason; a server without ManageSieve gives `not_offered`.
    `PasswordRefused` for a refused login, `MailServerError` when a server cannot answer.
    """

    def copy_filters(self, source_name: str, login: str, password: str | None,
                     target_login: str) -> FilterReport: ...


class ScriptRun(Protocol):
    """How one run of the post-migrate script ended (its output already redacted)."""

    @property
    def exit_status(self) -> int: ...

    @property
    def duration_seconds(self) -> float: ...

    @property
    def timed_out(self) -> bool: ...

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...


class PostMigrateScript(Protocol):
    """The admin's script run after each migration (`adapters.scripts.post_migrate.PostMigrateScript`)."""

    async def run(self, login: str, password: str, /) -> ScriptRun: ...



class ClientSessions(Protocol):
    """Users' open sessions the proxy relays to the old server (`adapters.proxy.open_relays.OpenRelays`)."""

    async def close_old_sessions(self, login: str) -> int:
        """Close `login`'s relays to the old server (IMAP `* BYE`); how many were closed."""
        ...

    def open_logins(self) -> list[str]:
        """The logins with a session to the old server open here."""
        ...


class NoClientSessions:
    """Where no proxy runs in this process (`migrate`, the console): no sessions to close here."""

    async def close_old_sessions(self, login: str) -> int:
        return 0

    def open_logins(self) -> list[str]:
        return []
