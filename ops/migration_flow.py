"""One account's migration, the same steps wherever it starts.

The proxy's background workers, `migrate --user`, `migrate --bulk`, the
console's Manual tab and `finish` all call `MigrationFlow`: verify the
password against the old server; keep it in the credential vault (unless a
source admin login makes that needless); create the account on the new
server with the aliases its mail shows (per `access_mode`) and write the
alias map; copy every folder (or, with `passwords_only`, only set the
password); complete; run the post-migrate script.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
import trio

from mailmigrator.adapters.accounts.alias_map import AliasMap
from mailmigrator.adapters.mail.copier import AccountJob, AccountResult, CopyProgress, MailboxCopier
from mailmigrator.adapters.mail.credentials import Credentials
from mailmigrator.adapters.mail.connection import (
    LoginRefused,
    MailConnectionError,
    describe_error,
    is_transient,
    source_login_name,
)
from mailmigrator.adapters.scripts.post_migrate import PostMigrateScript, ScriptOutcome
from mailmigrator.adapters.accounts.provisioning import (
    PasswdFileProvisioner,
    PostgresUsersProvisioner,
    Provisioner,
)
from mailmigrator.adapters.imap.recipient_headers import inbox_recipient_headers
from mailmigrator.adapters.store.vault import CredentialVault, VaultError, WrongVaultKey, load_or_create_key
from mailmigrator.domain.aliases import decide_alias, discover_aliases, is_strict_address, mapped_elsewhere
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.errors import AccountNotFound, DomainError
from mailmigrator.domain.logins import domain_part
from mailmigrator.ops.config import Config, ConfigError, TargetConfig
from mailmigrator.ops.copying import (
    MigrationRefused,
    build_copier,
    check_password,
    check_target_account,
    copy_plan,
    require_source,
    source_address,
    target_plan,
)

log = structlog.get_logger("mailmigrator.flow")

T = TypeVar("T")

SETTLED_STATES = ("completed", "swept")


@dataclass
class FlowOutcome:
    """How one account's migration ended, in one line for a person."""

    login: str
    ok: bool
    message: str
    result: AccountResult | None = None
    already_done: bool = False
    retryable: bool = False
    post_script: ScriptOutcome | None = None
    # Another node holds the account's lease: nothing was done here, nothing is wrong.
    busy: bool = False


def build_provisioner(target: TargetConfig) -> Provisioner:
    """The configured way of creating accounts on the new server."""
    if target.provisioning == "postgresql":
        provisioner = PostgresUsersProvisioner(target.postgresql_url, target.postgresql_table, target.password_scheme)
        provisioner.ensure_table()
        return provisioner
    if target.passwd_file is None:
        raise ConfigError("[target] provisioning = \"passwd-file\" needs passwd_file")
    return PasswdFileProvisioner(target.passwd_file, target.password_scheme)


def optional_provisioner(config: Config) -> Provisioner | None:
    """The provisioner when one is configured; None means the accounts must already exist on the new server."""
    target = config.target
    if target is None or (target.provisioning == "passwd-file" and target.passwd_file is None):
        return None
    return build_provisioner(target)


def needs_vault(config: Config) -> bool:
    """Without a source admin login, later passes (resume, finish) need the user's own password."""
    return not (config.source is not None and config.source.admin_user)


def open_vault(config: Config, app: MigrationService) -> CredentialVault | None:
    """The credential vault beside the events, or None when an admin login makes it needless."""
    if not needs_vault(config):
        return None
    key_file = config.store.credential_key_file or config.base_dir / "credentials.key"
    try:
        key = load_or_create_key(key_file)
    except VaultError as e:
        raise ConfigError(f"[store] credential_key_file: {e}") from None
    except OSError as e:
        raise ConfigError(f"[store] credential_key_file {key_file}: {e.strerror}") from None
    try:
        return CredentialVault.open(app.factory, key)
    except WrongVaultKey as e:
        raise ConfigError(f"[store] credential_key_file {key_file} {e}; every node needs a copy of the first "
                          "node's key file") from None


class MigrationFlow:
    """Migrates accounts one at a time or many at once; one instance shares its copier and progress."""

    def __init__(
        self,
        config: Config,
        app: MigrationService,
        copier: MailboxCopier | None = None,
        *,
        provisioner: Provisioner | None,
        vault: CredentialVault | None,
        progress: CopyProgress | None = None,
    ) -> None:
        self.config = config
        self.app = app
        self._copier = copier
        self._progress = progress or (copier.progress if copier is not None else CopyProgress())
        self.provisioner = provisioner
        self.vault = vault
        m = config.migration
        self.script = (PostMigrateScript(m.post_migrate_script, m.post_migrate_timeout, m.post_migrate_password)
                       if m.post_migrate_script else None)
        # The event store and the vault are written from one thread at a time.
        self._limiter = trio.CapacityLimiter(1)
        self._creating: dict[str, trio.Lock] = {}

    @property
    def progress(self) -> CopyProgress:
        return self._progress

    @property
    def copier(self) -> MailboxCopier:
        """Built on first use, so that a password check works before [target] is complete."""
        if self._copier is None:
            self._copier = build_copier(self.config, self.app, self._progress)
        return self._copier

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    async def verify(self, typed: str, login: str, password: str, method: str = "manual") -> None:
        """Check the password against the old server and record the result; `MigrationRefused` when wrong."""
        try:
            await trio.to_thread.run_sync(check_password, self.config, typed, login, password)
        except LoginRefused as e:
            await self._call(self.app.record_password_rejected, login, f"wrong password ({method} migration)")
            raise MigrationRefused(f"the old server refused the password: {e}") from None
        except (MailConnectionError, OSError) as e:
            raise MigrationRefused(f"cannot reach the old server: {describe_error(e)}") from None
        await self._call(self.app.record_password_verified, login, method)

    async def migrate_with_password(
        self, typed: str, login: str, password: str, *, aliases: Sequence[str] = (), method: str = "manual"
    ) -> FlowOutcome:
        """Verify, then migrate: the Manual tab's single user and each bulk line."""
        try:
            await self.verify(typed, login, password, method)
        except MigrationRefused as e:
            return FlowOutcome(login, False, str(e))
        name = source_login_name(typed, login, require_source(self.config).login_format)
        return await self.migrate(login, Credentials(name, password), aliases=aliases)

    async def migrate(
        self, login: str, credentials: Credentials, *, aliases: Sequence[str] = ()
    ) -> FlowOutcome:
        """Migrate one account whose password is verified; `credentials.login` is the old server's name for it.

        An empty password means "use the source admin login" (a resume without a vault).
        """
        password = credentials.password or None
        try:
            account = await self._call(self.app.account, login)
        except AccountNotFound:
            return FlowOutcome(login, False, "no verified password is recorded for this account")
        if account.state in SETTLED_STATES:
            return FlowOutcome(login, True, "already migrated; nothing to copy", already_done=True)
        try:
            if self.vault is not None and password is not None:
                await self._call(self.vault.put, login, password)
            await self._ensure_created(login, credentials, aliases)
            if self.config.migration.passwords_only:
                await self._call(self.app.record_completed, login, 0, 0, 0, 0.0, True)
                outcome = FlowOutcome(login, True, "password set, no mail copied (passwords only)")
            else:
                account = await self._call(self.app.account, login)
                job = AccountJob(
                    login,
                    copy_plan(self.config, credentials.login, login, password),
                    target_plan(self.config, account.target_login or login),
                )
                result = await self.copier.copy_account(job)
                if result.busy:
                    return FlowOutcome(login, False, result.error or "another node migrates it", result, busy=True)
                if not result.ok:
                    failed = await self._call(self.app.account, login)
                    return FlowOutcome(login, False, result.error or "copy failed", result,
                                       retryable=failed.failed_retryable)
                skipped = f", {result.skipped} skipped" if result.skipped else ""
                outcome = FlowOutcome(
                    login, True, f"migrated {result.folders} folders, {result.messages:,} messages{skipped}", result)
        except (MigrationRefused, ConfigError, DomainError, MailConnectionError, OSError, VaultError) as e:
            # A provisioning hiccup (a DomainError) may pass; a refusal or bad configuration will not.
            reason = describe_error(e)
            retryable = is_transient(e) if isinstance(e, (MailConnectionError, OSError)) else isinstance(e, DomainError)
            await self._record_failure(login, reason, retryable)
            return FlowOutcome(login, False, reason, retryable=retryable)
        outcome.post_script = await self.run_post_script(login, password)
        return outcome

    async def _ensure_created(self, login: str, credentials: Credentials, extra: Sequence[str]) -> None:
        """Create the account on the new server (or set its password with passwords_only) and record it."""
        lock = self._creating.setdefault(login, trio.Lock())
        async with lock:
            account = await self._call(self.app.account, login)
            password = credentials.password
            provisioner = self.provisioner
            if account.created and not self.config.migration.passwords_only:
                return
            if provisioner is None:
                if self.config.migration.passwords_only:
                    raise MigrationRefused("passwords_only needs [target] provisioning to set the password")
                await trio.to_thread.run_sync(check_target_account, self.config, login)
            else:
                if not password:
                    raise MigrationRefused("creating the account needs the user's password; the user must log in again")
                if await trio.to_thread.run_sync(provisioner.exists, login):
                    await trio.to_thread.run_sync(provisioner.set_password, login, password)
                else:
                    await trio.to_thread.run_sync(provisioner.create, login, password)
            if not account.created:
                candidates = sorted(set(await self._discover_aliases(login, credentials)) | {a.lower() for a in extra})
                aliases, rejected = await self._apply_aliases(login, candidates)
                await self._call(self.app.record_account_created, login, login, aliases,
                                 provisioner.name if provisioner else "existing", rejected)
                log.info("account created", login=login, aliases=aliases)
                for conflict in rejected:
                    log.warning("alias not applied", login=login, alias=conflict["address"], reason=conflict["reason"])
            if provisioner is not None and provisioner.settle_seconds > 0:
                await self._wait_until_visible(login, provisioner.settle_seconds)
        self._creating.pop(login, None)

    async def _apply_aliases(self, login: str, candidates: list[str]) -> tuple[list[str], list[dict[str, str]]]:
        """Write the aliases `decide_alias` allows into the alias map: (the account's aliases, the refused ones).

        The map file is read again under its lock when written, so a line added meanwhile is refused too.
        """
        if not candidates:
            return [], []
        target = self.config.target
        alias_map = AliasMap(target.alias_map) if target is not None and target.alias_map is not None else None
        m = self.config.migration
        domains = {d for d in (m.primary_domain, *m.domains.values(), domain_part(login)) if d}

        def is_account(address: str) -> bool:
            if self.app.has_account(address):
                return True
            return self.provisioner is not None and self.provisioner.exists(address)

        mapped = await trio.to_thread.run_sync(alias_map.entries) if alias_map is not None else {}
        accounts = {a for a in candidates if is_strict_address(a) and await self._call(is_account, a)}
        decisions = [decide_alias(a, login, migrated_domains=domains, accounts=accounts, alias_map=mapped)
                     for a in candidates]
        wanted = [d.address for d in decisions if d.action == "apply"]
        refused = await trio.to_thread.run_sync(alias_map.add, login, wanted) if alias_map is not None else {}
        conflicts = [d for d in decisions if d.action == "conflict"] + [mapped_elsewhere(*r) for r in refused.items()]
        rejected = [{"address": d.address, "reason": d.reason} for d in conflicts]
        kept = sorted(d.address for d in decisions if d.action != "conflict" and d.address not in refused)
        return kept, sorted(rejected, key=lambda r: r["address"])

    async def _discover_aliases(self, login: str, credentials: Credentials) -> list[str]:
        m = self.config.migration
        if m.access_mode == "username":
            return []
        source = require_source(self.config)
        if source.protocol == "pop3":
            log.info("alias discovery skipped: a POP3 source has no cheap header fetch", login=login)
            return []
        plan = copy_plan(self.config, credentials.login, login, credentials.password or None)
        try:
            blocks = await trio.to_thread.run_sync(inbox_recipient_headers, source_address(source), plan)
        except (MailConnectionError, OSError) as e:
            # Aliases are a convenience: the migration goes on without them.
            log.warning("alias discovery failed", login=login, error=describe_error(e))
            return []
        return discover_aliases(login, blocks, m.access_mode, use_x_envelope_to=m.use_x_envelope_to)

    async def run_post_script(self, login: str, password: str | None) -> ScriptOutcome | None:
        """Run the post-migrate script, log its output (password redacted) and record `PostScriptRan`."""
        if self.script is None:
            return None
        if password is None:
            log.warning("post-migrate script not run: no password is known for this account", login=login)
            return None
        outcome = await self.script.run(login, password)
        fields = {"login": login, "exit_status": outcome.exit_status, "duration_seconds": outcome.duration_seconds,
                  "timed_out": outcome.timed_out, "stdout": outcome.stdout, "stderr": outcome.stderr}
        if outcome.exit_status == 0 and not outcome.timed_out:
            log.info("post-migrate script ran", **fields)
        else:
            log.warning("post-migrate script failed", **fields)
        try:
            await self._call(self.app.record_post_script, login, outcome.exit_status, outcome.duration_seconds,
                             outcome.timed_out)
        except DomainError as e:
            log.warning("post-migrate script result not recorded", login=login, error=str(e))
        return outcome

    async def _wait_until_visible(self, login: str, settle_seconds: float) -> None:
        """Wait until the new server lets the master user into the new account, at most about twice `settle_seconds`.

        Dovecot notices a changed passwd-file within a second; asking is quicker than always sleeping
        that second, and the copy logs in right after.
        """
        deadline = trio.current_time() + 2 * settle_seconds
        while True:
            try:
                await trio.to_thread.run_sync(check_target_account, self.config, login)
                return
            except MigrationRefused:
                if trio.current_time() >= deadline:
                    return  # the copy's own login reports it, with retries
                await trio.sleep(0.1)

    async def _record_failure(self, login: str, reason: str, retryable: bool) -> None:
        def record() -> None:
            account = self.app.account(login)
            if account.allows("MigrationFailed"):
                self.app.record_failed(login, reason, retryable)

        try:
            await self._call(record)
        except DomainError as e:
            log.warning("failure not recorded", login=login, error=str(e))
        log.warning("migration failed", login=login, error=reason, retryable=retryable)


def build_flow(config: Config, app: MigrationService, progress: CopyProgress | None = None) -> MigrationFlow:
    """The flow wired to the configured servers, provisioner, vault and script."""
    return MigrationFlow(
        config, app, provisioner=optional_provisioner(config), vault=open_vault(config, app), progress=progress,
    )
