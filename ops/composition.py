"""The composition root: configuration in, each per-process object built once, use cases wired to adapters.

`open_store` opens the event store and its views; `build_node` is what
`serve` runs; `build_migration` is what `migrate`, the console's Manual tab
and `finish` use. Every copy a `serve` node makes (background, manual, finish
sweep) runs under the node's one adaptive limit on the old server, so
`connections_per_source_host` holds for the node.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from eventsourcing.persistence import PersistenceError

from mailmigrator.adapters.accounts.alias_map import AliasMap
from mailmigrator.adapters.accounts.transport_map import TransportMap
from mailmigrator.adapters.mail.adaptive_limit import AdaptiveLimit
from mailmigrator.adapters.mail.connection import ServerAddress, tls_context, warn_unverified
from mailmigrator.adapters.mail.copier import CopyProgress, CopyRecorder, CopySettings, MailboxCopier
from mailmigrator.adapters.mail.servers import AccountCopier, MailServers, SourceAccess, TargetAccess
from mailmigrator.adapters.mail.sweep import AccountSweeper, SweepRecorder
from mailmigrator.adapters.scripts.post_migrate import PostMigrateScript
from mailmigrator.adapters.sieve.servers import SievePorts, SieveServers
from mailmigrator.adapters.store.event_store import StoreError, check_store, parse_store_url, read_key_file, store_environment
from mailmigrator.adapters.store.sql_tables import is_creation_race
from mailmigrator.adapters.store.vault import CredentialVault, VaultError, WrongVaultKey, load_or_create_key
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.credentials import Credentials
from mailmigrator.domain.errors import MigrationRefused
from mailmigrator.domain.states import LEASED_STATES, UNFINISHED_STATES
from mailmigrator.domain.use_cases.finish_sweep import FinishSweep
from mailmigrator.domain.use_cases.migrate_account import MigrateAccount, MigrationSettings
from mailmigrator.domain.use_cases.move_filters import MoveFilters
from mailmigrator.domain.use_cases.ports import ClientSessions, Copier, CopyResult, NoClientSessions, Progress
from mailmigrator.domain.use_cases.switch_over import SwitchOver
from mailmigrator.domain.use_cases.records import MigrationRecords
from mailmigrator.ops.config import Config, ConfigError, SourceConfig, TargetConfig, read_secret_file
from mailmigrator.ops.preflight import copy_engine_choice
from mailmigrator.projections.accounts import expired_leases
from mailmigrator.projections.follower import MigrationViews

if TYPE_CHECKING:
    # What only `serve`, provisioning or the Dovecot engine needs is imported where it is built:
    # `migrate` then loads neither the proxy nor PostgreSQL nor the dsync driver.
    from mailmigrator.adapters.accounts.provisioning import Provisioner
    from mailmigrator.adapters.dovecot.copier import DsyncCopier
    from mailmigrator.adapters.proxy.backends import BackendAddress, ServerBackends
    from mailmigrator.adapters.proxy.listeners import LoginProxy, ProxyLimits
    from mailmigrator.adapters.proxy.throttle import LoginThrottle
    from mailmigrator.domain.use_cases.background import MigrationQueue
    from mailmigrator.domain.use_cases.first_login import FirstLogin, LoginSettings, RunState
    from mailmigrator.domain.use_cases.lease_takeover import LeaseTakeover


def source_address(source: SourceConfig, protocol: str | None = None) -> ServerAddress:
    """The old server's address: for copying (`protocol` None) POP3 only when the source speaks only POP3."""
    pop3 = protocol == "pop3" if protocol is not None else source.protocol == "pop3"
    return ServerAddress(source.host, source.pop3_port if pop3 else source.imap_port, source.tls, source.ca_file,
                         source.verify_certificate)


def target_address(target: TargetConfig) -> ServerAddress:
    return ServerAddress(target.host, target.port, target.tls, target.ca_file, target.verify_certificate)


def require_source(config: Config) -> SourceConfig:
    if config.source is None:
        raise ConfigError("[source] is missing: name the old server, e.g. host = \"old.example.com\"")
    return config.source


def require_target(config: Config) -> TargetConfig:
    if config.target is None:
        raise ConfigError("[target] is missing: name the new server and its master_user")
    if not config.target.master_user:
        raise ConfigError("[target] master_user is not set; copying logs in as user*master_user")
    return config.target


def mail_servers(config: Config, *, need_target: bool = True) -> MailServers:
    """The two servers with the admin and master logins read from their secret files."""
    source = require_source(config)
    admin = None
    if source.admin_user:
        admin = Credentials(source.admin_user,
                            read_secret_file(source.admin_password_file, "[source] admin_password_file"))
    target_access = None
    if need_target or (config.target is not None and config.target.master_user):
        target = require_target(config)
        master = Credentials(target.master_user,
                             read_secret_file(target.master_password_file, "[target] master_password_file"))
        target_access = TargetAccess(target_address(target), master)
    return MailServers(SourceAccess(source_address(source), source.protocol, source.login_format, admin,
                                    source.admin_login), target_access)


def build_provisioner(target: TargetConfig) -> Provisioner:
    """The configured way of creating accounts on the new server."""
    from mailmigrator.adapters.accounts.provisioning import PasswdFileProvisioner, PostgresUsersProvisioner

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


def open_vault(config: Config, app: MigrationService) -> CredentialVault | None:
    """The credential vault beside the events, or None when a source admin login makes it needless."""
    if config.source is not None and config.source.admin_user:
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


def source_limit(config: Config) -> AdaptiveLimit:
    """The node's one limit on connections to the old server."""
    m = config.migration
    return AdaptiveLimit(require_source(config).host or "source", m.connections_per_source_host,
                         adaptive=m.adaptive_connections)


def copy_engine(config: Config, recorder: CopyRecorder, servers: MailServers, limit: AdaptiveLimit,
                progress: CopyProgress | None = None) -> MailboxCopier:
    """A copy engine over `servers`, recording through `recorder`, under the node's `limit`."""
    m = config.migration
    warn_unverified(servers.source.address, "[source]")
    warn_unverified(servers.require_target().address, "[target]")
    settings = CopySettings(
        exclude_folders=m.exclude_folders, max_message_size=m.max_message_size, concurrency=m.concurrency,
        folder_connections=min(3, m.connections_per_source_host), node=m.node_name, lease_seconds=m.lease_seconds,
    )
    return MailboxCopier(recorder, servers.open_source, servers.open_target, limit, settings, progress)


def account_copier(config: Config, recorder: CopyRecorder, servers: MailServers, limit: AdaptiveLimit,
                   progress: CopyProgress | None = None) -> AccountCopier | DsyncCopier:
    """The engine `[target] engine` chooses: dsync keeps the old UIDs and UIDVALIDITY, the IMAP engine appends."""
    target = require_target(config)
    if copy_engine_choice(target, config.source) == "imap":
        return AccountCopier(servers, copy_engine(config, recorder, servers, limit, progress))
    from mailmigrator.adapters.dovecot.copier import DsyncCopier, DsyncSettings
    from mailmigrator.adapters.dovecot.doveadm import find_doveadm

    m = config.migration
    warn_unverified(servers.source.address, "[source]")
    settings = DsyncSettings(doveadm=find_doveadm() or "doveadm", doveadm_config=target.doveadm_config,
                             exclude_folders=m.exclude_folders, node=m.node_name, lease_seconds=m.lease_seconds)
    return DsyncCopier(recorder, servers, limit, settings, progress or CopyProgress())


def migration_settings(config: Config) -> MigrationSettings:
    m = config.migration
    return MigrationSettings(
        passwords_only=m.passwords_only, access_mode=m.access_mode, use_x_envelope_to=m.use_x_envelope_to,
        migrated_domains=frozenset(d for d in (m.primary_domain, *m.domains.values()) if d),
        source_protocol=require_source(config).protocol, while_copying=m.while_copying,
    )


class UnconfiguredCopier:
    """Stands in for the copy engine while `[target]` cannot be copied to; says why at the first copy."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def copy(self, login: str, source_name: str, password: str | None, target_login: str,
                   progress: Progress | None = None) -> CopyResult:
        raise MigrationRefused(self.reason)


@dataclass
class Migration:
    """One account's migration as this process runs it, with what it was built from."""

    migrate: MigrateAccount
    servers: MailServers
    vault: CredentialVault | None
    limit: AdaptiveLimit | None
    progress: CopyProgress


def build_migration(config: Config, app: MigrationService, *, records: MigrationRecords | None = None,
                    progress: CopyProgress | None = None, limit: AdaptiveLimit | None = None,
                    need_target: bool = True, sessions: ClientSessions | None = None) -> Migration:
    """The migrate-one-account use case wired to the configured servers, provisioner, vault, alias map and script.

    `limit` is the node's limit on connections to the old server when another part of the process has it;
    `sessions` the proxy's relays to the old server, which an account's switch closes.
    """
    servers = mail_servers(config, need_target=need_target)
    progress = progress or CopyProgress()
    copier: Copier
    records = records or MigrationRecords(app)
    filters: MoveFilters | None = None
    try:
        require_target(config)
    except ConfigError as e:
        copier = UnconfiguredCopier(str(e))
    else:
        limit = limit or source_limit(config)
        copier = account_copier(config, app, servers, limit, progress)
        filters = sieve_step(config, records, servers)
    target, m = config.target, config.migration
    vault = open_vault(config, app)
    switch = SwitchOver(records, copier, sessions or NoClientSessions(), m.node_name, m.lease_seconds,
                        filters=filters)
    migrate = MigrateAccount(
        records, servers, copier, migration_settings(config),
        accounts=optional_provisioner(config), vault=vault,
        alias_file=AliasMap(target.alias_map) if target is not None and target.alias_map is not None else None,
        script=(PostMigrateScript(m.post_migrate_script, m.post_migrate_timeout, m.post_migrate_password)
                if m.post_migrate_script else None),
        switch=switch,
        filters=filters,
    )
    return Migration(migrate, servers, vault, limit, progress)


def sieve_servers(config: Config, servers: MailServers) -> SieveServers:
    """ManageSieve on both servers, on their `managesieve_port`s, TLS as for mail."""
    source, target = require_source(config), require_target(config)
    return SieveServers(servers, SievePorts(source.managesieve_port, target.managesieve_port))


def sieve_step(config: Config, records: MigrationRecords, servers: MailServers) -> MoveFilters | None:
    """The Sieve step of each migration with `[migration] sieve` (not with passwords_only: nothing is copied)."""
    m = config.migration
    if not m.sieve or m.passwords_only:
        return None
    return MoveFilters(records, sieve_servers(config, servers))


class AccountViews:
    """The account projection's answers the take-over and the finish sweep need, read after a catch-up."""

    def __init__(self, views: MigrationViews) -> None:
        self.views = views

    def locked(self) -> list[str]:
        """Accounts a copy or a switch is due for: locked ones, and copied ones awaiting their switch."""
        return [login for logins in self.logins_in(UNFINISHED_STATES).values() for login in logins]

    def logins_in(self, states: frozenset[str]) -> dict[str, list[str]]:
        self.views.catch_up()
        return self.views.logins_in(states)

    def expired(self, node: str, now: datetime, lease_seconds: float) -> list[str]:
        return expired_leases(self.views.leases(LEASED_STATES, node), node, now, lease_seconds)


def build_finish(config: Config, app: MigrationService, views: MigrationViews, migration: Migration) -> FinishSweep:
    """The finish sweep over `migration`'s servers, its sweeping engine under the same source limit."""
    recorder = SweepRecorder(app)
    limit = migration.limit or source_limit(config)
    sweeper = AccountSweeper(account_copier(config, recorder, migration.servers, limit, CopyProgress()), recorder)
    return FinishSweep(migration.migrate.records, migration.servers, migration.migrate, sweeper,
                       AccountViews(views), migration.vault, config.migration.concurrency)


def proxy_limits(config: Config) -> ProxyLimits:
    """The proxy's connection limits as configured in `[proxy]`."""
    from mailmigrator.adapters.proxy.listeners import ProxyLimits

    p = config.proxy
    return ProxyLimits(
        max_connections=p.max_connections, max_connections_per_address=p.max_connections_per_address,
        login_timeout=p.login_timeout, send_timeout=p.send_timeout, relay_send_timeout=p.relay_send_timeout,
    )


def backend(address: ServerAddress) -> BackendAddress:
    from mailmigrator.adapters.proxy.backends import BackendAddress

    context = tls_context(address) if address.tls != "disable" else None
    return BackendAddress(address.host, address.port, address.tls, context)


def server_backends(config: Config, servers: MailServers) -> ServerBackends:
    from mailmigrator.adapters.proxy.backends import ServerBackends

    source, target = require_source(config), require_target(config)
    target_access = servers.require_target()
    new_imap = target_address(target)
    warn_unverified(source_address(source, "imap"), "source")
    warn_unverified(new_imap, "target")
    return ServerBackends(
        old_imap=backend(source_address(source, "imap")), old_pop3=backend(source_address(source, "pop3")),
        new_imap=backend(new_imap),
        new_pop3=backend(replace(new_imap, port=target.pop3_port)) if target.pop3_port else None,
        master_user=target_access.master.login, master_password=target_access.master.password,
        migration_account=config.migration.migration_account,
    )


def login_settings(config: Config) -> LoginSettings:
    from mailmigrator.domain.use_cases.first_login import LoginSettings

    m, source = config.migration, require_source(config)
    return LoginSettings(primary_domain=m.primary_domain, domains=dict(m.domains), passwords_only=m.passwords_only,
                         migration_account=m.migration_account, source_protocol=source.protocol,
                         login_format=source.login_format, while_copying=m.while_copying)


@dataclass
class Node:
    """Everything `serve` runs, each built once from the configuration."""

    config: Config
    app: MigrationService
    records: MigrationRecords
    views: MigrationViews
    migration: Migration
    queue: MigrationQueue
    first_login: FirstLogin
    takeover: LeaseTakeover
    proxy: LoginProxy
    run_state: RunState


def build_node(config: Config, app: MigrationService, limits: ProxyLimits | None = None,
               throttle: LoginThrottle | None = None, views: MigrationViews | None = None) -> Node:
    """Wire the proxy, the first-login and background use cases and the copy engine from `config`."""
    from mailmigrator.adapters.proxy.listeners import LoginProxy, server_ssl_context
    from mailmigrator.adapters.proxy.open_relays import OpenRelays
    from mailmigrator.adapters.proxy.throttle import LoginThrottle
    from mailmigrator.domain.use_cases.background import MigrationQueue
    from mailmigrator.domain.use_cases.first_login import FirstLogin, RunState
    from mailmigrator.domain.use_cases.lease_takeover import LeaseTakeover

    if config.source is None:
        raise ConfigError("[source] is missing: serve needs the old server")
    if config.target is None:
        raise ConfigError("[target] is missing: serve needs the new server")
    if not config.target.master_user:
        raise ConfigError("[target] master_user is missing: serve writes mailboxes through the Dovecot master user")
    if config.target.provisioning == "passwd-file" and config.target.passwd_file is None:
        raise ConfigError("[target] provisioning = \"passwd-file\" needs passwd_file")
    m = config.migration
    records = MigrationRecords(app)
    old_relays = OpenRelays()
    migration = build_migration(config, app, records=records, sessions=old_relays)
    queue = MigrationQueue(migration.migrate, m.concurrency)
    run_state = RunState()
    first_login = FirstLogin(records, server_backends(config, migration.servers), queue, migration.migrate,
                             login_settings(config), run_state, vault=migration.vault)
    views = views or build_views(config, app)
    takeover = LeaseTakeover(records, migration.servers, queue, AccountViews(views), migration.vault,
                             m.node_name, m.lease_seconds)
    p = config.proxy
    context = server_ssl_context(p.tls_cert, p.tls_key) if p.tls_cert and p.tls_key else None
    proxy = LoginProxy(first_login, throttle or LoginThrottle(), context, limits or proxy_limits(config),
                       p.require_tls_for_login, old_relays)
    return Node(config, app, records, views, migration, queue, first_login, takeover, proxy, run_state)


def transport_map(config: Config) -> TransportMap | None:
    """The Postfix transport map of accounts not yet switched over, when `[target] transport_map` is set."""
    target = config.target
    if target is None or target.transport_map is None:
        return None
    return TransportMap(target.transport_map, target.old_smtp, target.postmap or None)


def build_views(config: Config, app: MigrationService) -> MigrationViews:
    """The read models over `app`'s store, with the files derived from them: the log file and the transport map."""
    return MigrationViews(app, log_file=config.migration.log_file, transport_map=transport_map(config))


CREATE_RACE_RETRIES = 5


@dataclass
class OpenStore:
    """The application service and the read models over one store."""

    app: MigrationService
    views: MigrationViews

    def close(self) -> None:
        self.app.close()


def open_store(config: Config, *, create: bool) -> OpenStore | None:
    """Open the event store named by the config.

    Without `create`, an SQLite file that does not exist yet gives None
    (nothing is recorded) and nothing is written.
    """
    location = parse_store_url(config.store.url, config.base_dir)
    exists = check_store(location, must_exist=False, lock_timeout=config.store.lock_timeout)
    if not exists and not create:
        return None
    key = read_key_file(config.store.encryption_key_file) if config.store.encryption_key_file else None
    env = store_environment(location, key, config.store.lock_timeout)
    for attempt in range(1, CREATE_RACE_RETRIES + 1):
        app: MigrationService | None = None
        try:
            app = MigrationService(env=env)
            views = build_views(config, app)
        except PersistenceError as e:
            if app is not None:
                app.close()
            # Nodes starting together on an empty PostgreSQL database race to create the
            # same tables; CREATE ... IF NOT EXISTS is not atomic there. The loser retries.
            if attempt < CREATE_RACE_RETRIES and is_creation_race(e):
                time.sleep(random.uniform(0.1, 0.5))
                continue
            raise StoreError(f"cannot open {location.describe()}: {_first_line(e)}") from None
        return OpenStore(app=app, views=views)
    raise AssertionError("unreachable")



def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
