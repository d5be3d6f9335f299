"""Service-side glue for copying: configuration in, connections, login plans and a copier out.

The steps of one account's migration live in `ops.migration_flow`.
"""

from __future__ import annotations

from mailmigrator.adapters.mail.adaptive_limit import AdaptiveLimit
from mailmigrator.adapters.mail.copier import CopyProgress, CopySettings, MailboxCopier
from mailmigrator.adapters.mail.credentials import Credentials
from mailmigrator.adapters.imap.source import ImapSource
from mailmigrator.adapters.imap.target import ImapTarget
from mailmigrator.adapters.mail.connection import (
    LoginPlan,
    LoginRefused,
    MailConnectionError,
    ServerAddress,
    describe_error,
    is_transient,
    source_login_name,
    warn_unverified,
)
from mailmigrator.adapters.mail.message_source import MessageSource
from mailmigrator.adapters.pop3.source import Pop3Source
from mailmigrator.adapters.mail.comparison import MailboxComparison
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.errors import ExplainedError
from mailmigrator.ops.config import Config, ConfigError, SourceConfig, TargetConfig, read_secret_file


class MigrationRefused(ExplainedError):
    """A manual migration cannot go on; the message is the one line to show."""


def source_address(source: SourceConfig) -> ServerAddress:
    """The old server's address for copying: POP3 only when the protocol is pop3 ("both" copies over IMAP)."""
    port = source.pop3_port if source.protocol == "pop3" else source.imap_port
    return ServerAddress(source.host, port, source.tls, source.ca_file, source.verify_certificate)


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


def user_plan(config: Config, typed: str, login: str, password: str) -> LoginPlan:
    """Logging in to the old server as the user with their own password."""
    name = source_login_name(typed, login, require_source(config).login_format)
    return LoginPlan(name, Credentials(name, password))


def copy_plan(config: Config, typed: str, login: str, password: str | None) -> LoginPlan:
    """How copies log in to the old server: the admin login when configured, else the user's own."""
    source = require_source(config)
    name = source_login_name(typed, login, source.login_format)
    if source.admin_user:
        secret = read_secret_file(source.admin_password_file, "[source] admin_password_file")
        return LoginPlan(name, Credentials(source.admin_user, secret), source.admin_login)
    if password is None:
        raise MigrationRefused(f"{login}: the old server needs the user's password (no [source] admin_user)")
    return LoginPlan(name, Credentials(name, password))


def target_plan(config: Config, target_login: str) -> LoginPlan:
    """Logging in to the new server as ``user*master_user``."""
    target = require_target(config)
    secret = read_secret_file(target.master_password_file, "[target] master_password_file")
    return LoginPlan(target_login, Credentials(target.master_user, secret), "dovecot-master")


def open_source_for(config: Config) -> type[ImapSource] | type[Pop3Source]:
    return Pop3Source if require_source(config).protocol == "pop3" else ImapSource


def build_copier(
    config: Config, service: MigrationService, progress: CopyProgress | None = None
) -> MailboxCopier:
    """A copier wired to the configured servers and limits."""
    source = require_source(config)
    target = require_target(config)
    src_address, tgt_address = source_address(source), target_address(target)
    warn_unverified(src_address, "[source]")
    warn_unverified(tgt_address, "[target]")
    reader = open_source_for(config)
    m = config.migration
    settings = CopySettings(
        exclude_folders=m.exclude_folders,
        max_message_size=m.max_message_size,
        concurrency=m.concurrency,
        folder_connections=min(3, m.connections_per_source_host),
        node=m.node_name,
        lease_seconds=m.lease_seconds,
    )
    source_limit = AdaptiveLimit(source.host or "source", m.connections_per_source_host,
                                 adaptive=m.adaptive_connections)
    return MailboxCopier(
        service,
        lambda plan: reader(src_address, plan),
        lambda plan: ImapTarget(tgt_address, plan),
        source_limit,
        settings,
        progress,
    )


def check_password(config: Config, typed: str, login: str, password: str) -> None:
    """Log in to the old server as the user; `LoginRefused` when the password is wrong."""
    source = require_source(config)
    reader = open_source_for(config)
    connection: MessageSource = reader(source_address(source), user_plan(config, typed, login, password))
    connection.close()


def check_target_account(config: Config, target_login: str) -> None:
    """The account must exist on the new server: the master login for it succeeds."""
    try:
        ImapTarget(target_address(require_target(config)), target_plan(config, target_login)).close()
    except LoginRefused:
        raise MigrationRefused(
            f"{target_login} does not exist on the new server; create it first (no provisioning is plugged in)"
        ) from None


def verify_one(config: Config, typed: str, login: str, password: str | None, target_login: str) -> list[str]:
    """Differences between the old and the new mailbox of one account, one line each."""
    source = require_source(config)
    reader = open_source_for(config)
    old: MessageSource | None = None
    new: ImapSource | None = None
    try:
        old = reader(source_address(source), copy_plan(config, typed, login, password))
        new = ImapSource(target_address(require_target(config)), target_plan(config, target_login))
        return MailboxComparison(old, new, config.migration.exclude_folders).differences()
    except (MailConnectionError, OSError) as e:
        retry = " (try again)" if is_transient(e) else ""
        raise MigrationRefused(f"{login}: {describe_error(e)}{retry}") from None
    finally:
        for connection in (old, new):
            if connection is not None:
                connection.close()
