"""Migrate one account: the same steps wherever the migration starts.

The proxy's background queue, `migrate --user`, `migrate --bulk`, the console's
Manual tab and `finish` all come here: keep the verified password for later
passes; create the account on the new server with the aliases its mail shows
(per `access_mode`) and write the alias map; copy every folder (or, with
`passwords_only`, only set the password); complete, or, when the users kept
working on the old server during the copy, switch them over (`switch_over`);
run the post-migrate script. A failure is recorded here, on the account, and returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
import trio

from mailmigrator.domain.aliases import decide_alias, discover_aliases, is_strict_address, mapped_elsewhere
from mailmigrator.domain.credentials import Credentials
from mailmigrator.domain.errors import (
    DomainError,
    ExplainedError,
    MailServerError,
    MigrationRefused,
    PasswordRefused,
    failure_text,
)
from mailmigrator.domain.logins import domain_part
from mailmigrator.domain.states import DEFAULT_WHILE_COPYING, SETTLED_STATES, SWITCH_STATES
from mailmigrator.domain.use_cases.move_filters import MoveFilters
from mailmigrator.domain.use_cases.ports import (
    AliasFile,
    Copier,
    CopyResult,
    CredentialStore,
    MailServers,
    NewAccounts,
    PostMigrateScript,
    Progress,
    ScriptRun,
)
from mailmigrator.domain.use_cases.records import MigrationRecords
from mailmigrator.domain.use_cases.switch_over import SwitchOver

log = structlog.get_logger("mailmigrator.migrate")


@dataclass(frozen=True)
class MigrationSettings:
    """The parts of `[migration]` and `[source]` one account's migration needs."""

    passwords_only: bool = False
    access_mode: str = "username"  # username | extended | full
    use_x_envelope_to: bool = False
    migrated_domains: frozenset[str] = frozenset()
    source_protocol: str = "imap"  # imap | pop3 | both
    while_copying: str = DEFAULT_WHILE_COPYING  # old-server | notice | refuse


@dataclass
class MigrationOutcome:
    """How one account's migration ended, in one line for a person."""

    login: str
    ok: bool
    message: str
    result: CopyResult | None = None
    already_done: bool = False
    retryable: bool = False
    post_script: ScriptRun | None = None
    # Another node holds the account's lease: nothing was done here, nothing is wrong.
    busy: bool = False


@dataclass
class MigrateAccount:
    """Migrates accounts whose password is verified, any number at once."""

    records: MigrationRecords
    servers: MailServers
    copier: Copier
    settings: MigrationSettings
    accounts: NewAccounts | None = None
    vault: CredentialStore | None = None
    alias_file: AliasFile | None = None
    script: PostMigrateScript | None = None
    # The switch after an old-server copy; built over `copier` when not given.
    switch: SwitchOver | None = None
    # Sieve scripts (`[migration] sieve`): moved before the pass that completes the migration.
    filters: MoveFilters | None = None
    _creating: dict[str, trio.Lock] = field(default_factory=dict)
    # Provisioned ahead of the copy (`create_ahead`): not to be written again when the copy starts.
    _ahead: set[str] = field(default_factory=set)
    # Provisioned here, and the new server has not yet been seen to know it.
    _unseen: set[str] = field(default_factory=set)
    # A password set on a prepared account: when the new server is sure to accept it (trio clock).
    _password_readable_at: dict[str, float] = field(default_factory=dict)

    async def password_readable(self, login: str) -> None:
        """Return once the new server accepts the password set here on `login`'s prepared account."""
        at = self._password_readable_at.get(login)
        if at is not None:
            await trio.sleep_until(at)
            self._password_readable_at.pop(login, None)

    async def verify(self, typed: str, login: str, password: str, method: str = "manual") -> None:
        """Check the password against the old server and record the result; `MigrationRefused` when wrong."""
        try:
            await trio.to_thread.run_sync(self.servers.check_password, typed, login, password)
        except PasswordRefused as e:
            await self.records.password_rejected(login, f"wrong password ({method} migration)")
            raise MigrationRefused(f"the old server refused the password: {e}") from None
        except MailServerError as e:
            raise MigrationRefused(f"cannot reach the old server: {e}") from None
        await self.records.password_verified(login, method, self.settings.while_copying)

    async def with_password(self, typed: str, login: str, password: str, *, aliases: Sequence[str] = (),
                            method: str = "manual", progress: Progress | None = None,
                            slots: tuple[trio.Semaphore, trio.Semaphore] | None = None) -> MigrationOutcome:
        """Verify, then migrate: the Manual tab's single user and each bulk line.

        `slots` (ahead, copy): the password check and the account's creation run under the first,
        the copy under the second, so the new server already knows the account when its copy starts.
        """
        if slots is None:
            credentials = await self.verified(typed, login, password, method)
            if isinstance(credentials, MigrationOutcome):
                return credentials
            return await self.run(login, credentials, aliases=aliases, progress=progress)
        async with slots[0]:
            credentials = await self.verified(typed, login, password, method)
            if isinstance(credentials, MigrationOutcome):
                return credentials
            failure = await self.create_ahead(login, credentials, aliases)
            if failure is not None:
                return failure
        async with slots[1]:
            return await self.run(login, credentials, aliases=aliases, progress=progress)

    async def verified(self, typed: str, login: str, password: str, method: str) -> Credentials | MigrationOutcome:
        """The old server's credentials once the password is verified, else the refusal."""
        try:
            await self.verify(typed, login, password, method)
        except MigrationRefused as e:
            return MigrationOutcome(login, False, str(e))
        return Credentials(self.servers.source_name(typed, login), password)

    async def create_ahead(self, login: str, credentials: Credentials,
                           aliases: Sequence[str] = ()) -> MigrationOutcome | None:
        """Keep the password and create the account on the new server before its copy may start.

        Dovecot notices a new passwd-file line only when the second it last looked at the file has
        passed; created while the account waits for a copy slot, it is known when the copy logs in.
        None when done; else the failure, recorded.
        """
        account = await self.records.account_or_none(login)
        if account is None or account.state in SETTLED_STATES:
            return None
        password = credentials.password or None
        try:
            if self.vault is not None and password is not None:
                vault = self.vault
                await self.records.in_thread(lambda: vault.put(login, password))
            await self.ensure_created(login, credentials, aliases, wait_visible=False)
        except ExplainedError as e:
            return await self.failed(login, failure_text(e), retryable_failure(e))
        except OSError as e:
            return await self.failed(login, failure_text(e), True)
        return None

    async def run(self, login: str, credentials: Credentials, *, aliases: Sequence[str] = (),
                  progress: Progress | None = None) -> MigrationOutcome:
        """Migrate one account whose password is verified; `credentials.login` is the old server's name for it.

        An empty password means "use the source admin login" (a resume without a vault).
        """
        account = await self.records.account_or_none(login)
        if account is None:
            return MigrationOutcome(login, False, "no verified password is recorded for this account")
        if account.state in SETTLED_STATES:
            return MigrationOutcome(login, True, "already migrated; nothing to copy", already_done=True)
        password = credentials.password or None
        try:
            if self.vault is not None and password is not None:
                vault = self.vault
                await self.records.in_thread(lambda: vault.put(login, password))
            await self.ensure_created(login, credentials, aliases)
            outcome = await self.copy(login, credentials, progress)
        except ExplainedError as e:
            return await self.failed(login, failure_text(e), retryable_failure(e))
        except OSError as e:
            return await self.failed(login, failure_text(e), True)
        if outcome.ok:
            await self.password_readable(login)
            outcome.post_script = await self.run_post_script(login, password)
        return outcome

    async def copy(self, login: str, credentials: Credentials, progress: Progress | None = None) -> MigrationOutcome:
        """Copy the mail (nothing with `passwords_only`) and say how it went; the copy engine records progress."""
        if self.settings.passwords_only:
            await self.records.passwords_only_completed(login)
            return MigrationOutcome(login, True, "password set, no mail copied (passwords only)")
        account = await self.records.account(login)
        target_login = account.target_login or login
        if account.state in SWITCH_STATES:
            return await self.switch_over(login, credentials, target_login, progress)
        if account.copy_mode_due(self.settings.while_copying):
            await self.records.copy_mode_chosen(login, self.settings.while_copying)
            account = await self.records.account(login)
        if self.filters is not None and account.while_copying != "old-server":
            # This pass completes the migration; in old-server mode the switch moves the scripts.
            await self.filters.run(login, credentials, target_login)
        result = await self.copier.copy(login, credentials.login, credentials.password or None, target_login,
                                        progress)
        if result.ok and (await self.records.account(login)).state in SWITCH_STATES:
            return await self.switch_over(login, credentials, target_login, progress)
        if result.busy:
            return MigrationOutcome(login, False, result.error or "another node migrates it", result, busy=True)
        if not result.ok:
            failed = await self.records.account(login)
            return MigrationOutcome(login, False, result.error or "copy failed", result,
                                    retryable=failed.failed_retryable)
        skipped = f", {result.skipped} skipped" if result.skipped else ""
        return MigrationOutcome(login, True, f"migrated {result.folders} folders, {result.messages:,} messages{skipped}",
                                result)

    async def switch_over(self, login: str, credentials: Credentials, target_login: str,
                          progress: Progress | None) -> MigrationOutcome:
        """The first copy caught up while the user kept working on the old server: switch to the new one."""
        switch = self.switch or SwitchOver(self.records, self.copier, filters=self.filters)
        outcome = await switch.run(login, credentials, target_login, progress)
        if outcome.busy:
            return MigrationOutcome(login, False, outcome.message, outcome.result, busy=True)
        if not outcome.ok:
            failed = await self.records.account(login)
            return MigrationOutcome(login, False, outcome.message, outcome.result, retryable=failed.failed_retryable)
        return MigrationOutcome(login, True, outcome.message, outcome.result)

    async def ensure_created(self, login: str, credentials: Credentials, extra: Sequence[str], *,
                             wait_visible: bool = True) -> None:
        """Create the account on the new server (or set its password with passwords_only) and record it.

        `wait_visible`: return only once the new server lets the master user in (a change written here
        earlier, by `create_ahead`, is waited for too).
        """
        lock = self._creating.setdefault(login, trio.Lock())
        async with lock:
            account = await self.records.account(login)
            if account.password_pending and login not in self._ahead:
                # Prepared by a pre-copy with no usable password: the verified one opens it from now on.
                await self.provision(login, credentials.password)
                await self.records.password_set(login, self.accounts.name if self.accounts else "existing")
                if self.accounts is not None and self.accounts.settle_seconds > 0:
                    # The copy and the switch use the master user; the user's own login waits for this.
                    self._password_readable_at[login] = trio.current_time() + self.accounts.settle_seconds
            elif not account.created or self.settings.passwords_only:
                if login not in self._ahead:
                    await self.provision(login, credentials.password)
                    self._unseen.add(login)
                if not account.created:
                    await self.record_created(login, credentials, extra)
            if wait_visible:
                self._ahead.discard(login)
                if login in self._unseen and self.accounts is not None and self.accounts.settle_seconds > 0:
                    await self.wait_until_visible(login, self.accounts.settle_seconds)
                self._unseen.discard(login)
            else:
                self._ahead.add(login)
        self._creating.pop(login, None)

    async def provision(self, login: str, password: str) -> None:
        """Give the new account the user's password, creating it when missing; without provisioning it must exist."""
        accounts = self.accounts
        if accounts is None:
            if self.settings.passwords_only:
                raise MigrationRefused("passwords_only needs [target] provisioning to set the password")
            await trio.to_thread.run_sync(self.servers.check_target_account, login)
            return
        if not password:
            raise MigrationRefused("creating the account needs the user's password; the user must log in again")
        if await trio.to_thread.run_sync(accounts.exists, login):
            await trio.to_thread.run_sync(accounts.set_password, login, password)
        else:
            await trio.to_thread.run_sync(accounts.create, login, password)

    async def record_created(self, login: str, credentials: Credentials, extra: Sequence[str]) -> None:
        candidates = sorted(set(await self.discover_aliases(login, credentials)) | {a.lower() for a in extra})
        aliases, rejected = await self.apply_aliases(login, candidates)
        await self.records.account_created(login, aliases, self.accounts.name if self.accounts else "existing",
                                           rejected)
        log.info("account created", login=login, aliases=aliases)
        for conflict in rejected:
            log.warning("alias not applied", login=login, alias=conflict["address"], reason=conflict["reason"])

    async def apply_aliases(self, login: str, candidates: list[str]) -> tuple[list[str], list[dict[str, str]]]:
        """Write the aliases `decide_alias` allows into the alias map: (the account's aliases, the refused ones).

        The map file is read again under its lock when written, so a line added meanwhile is refused too.
        """
        if not candidates:
            return [], []
        alias_file = self.alias_file
        domains = set(self.settings.migrated_domains) | {domain_part(login)}
        mapped = await trio.to_thread.run_sync(alias_file.entries) if alias_file is not None else {}
        accounts = {a for a in candidates if is_strict_address(a) and await self.is_account(a)}
        decisions = [decide_alias(a, login, migrated_domains=domains, accounts=accounts, alias_map=mapped)
                     for a in candidates]
        wanted = [d.address for d in decisions if d.action == "apply"]
        refused = await trio.to_thread.run_sync(alias_file.add, login, wanted) if alias_file is not None else {}
        conflicts = [d for d in decisions if d.action == "conflict"] + [mapped_elsewhere(*r) for r in refused.items()]
        rejected = [{"address": d.address, "reason": d.reason} for d in conflicts]
        kept = sorted(d.address for d in decisions if d.action != "conflict" and d.address not in refused)
        return kept, sorted(rejected, key=lambda r: r["address"])

    async def is_account(self, address: str) -> bool:
        """Whether `address` is an account of its own, here or on the new server."""
        if await self.records.has_account(address):
            return True
        accounts = self.accounts
        return accounts is not None and await self.records.in_thread(lambda: accounts.exists(address))

    async def discover_aliases(self, login: str, credentials: Credentials) -> list[str]:
        s = self.settings
        if s.access_mode == "username":
            return []
        if s.source_protocol == "pop3":
            log.info("alias discovery skipped: a POP3 source has no cheap header fetch", login=login)
            return []
        try:
            blocks = await trio.to_thread.run_sync(self.servers.recipient_headers, credentials.login, login,
                                                   credentials.password or None)
        except (MailServerError, PasswordRefused) as e:
            # Aliases are a convenience: the migration goes on without them.
            log.warning("alias discovery failed", login=login, error=str(e))
            return []
        return discover_aliases(login, blocks, s.access_mode, use_x_envelope_to=s.use_x_envelope_to)

    async def run_post_script(self, login: str, password: str | None) -> ScriptRun | None:
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
            await self.records.post_script_ran(login, outcome.exit_status, outcome.duration_seconds, outcome.timed_out)
        except DomainError as e:
            log.warning("post-migrate script result not recorded", login=login, error=str(e))
        return outcome

    async def wait_until_visible(self, login: str, settle_seconds: float) -> None:
        """Wait until the new server lets the master user into the new account, at most about twice `settle_seconds`.

        Dovecot notices a changed passwd-file within a second; asking is quicker than always sleeping
        that second, and the copy logs in right after.
        """
        with trio.move_on_after(2 * settle_seconds):
            while True:
                try:
                    await trio.to_thread.run_sync(self.servers.check_target_account, login)
                    return
                except (MigrationRefused, MailServerError):
                    await trio.sleep(0.1)

    async def failed(self, login: str, reason: str, retryable: bool) -> MigrationOutcome:
        """Record the failure on the account (the one place outside the copy engine) and return it."""
        try:
            await self.records.failed(login, reason, retryable)
        except DomainError as e:
            log.warning("failure not recorded", login=login, error=str(e))
        log.warning("migration failed", login=login, error=reason, retryable=retryable)
        return MigrationOutcome(login, False, reason, retryable=retryable)


def retryable_failure(error: ExplainedError) -> bool:
    """A provisioning hiccup (a `DomainError`) or a transient server failure may pass; a refusal will not."""
    if isinstance(error, MailServerError):
        return error.retryable
    return isinstance(error, DomainError)
