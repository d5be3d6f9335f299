"""`mailmigrator serve`: proxy listeners, migration workers and projections in one trio nursery.

SIGINT/SIGTERM cancel the nursery: connections close, copies stop after
their last recorded checkpoint, and a restart resumes from there. The run
state (`start` / `stop` from another process) is polled every second.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import trio

from mailmigrator.adapters.backend import BackendAddress, ServerBackends
from mailmigrator.adapters.copier import AccountJob
from mailmigrator.adapters.credentials import Credentials
from mailmigrator.adapters.login_routing import LoginRouter, RoutingSettings, StoreCalls
from mailmigrator.adapters.mail_connection import ServerAddress, tls_context, warn_unverified
from mailmigrator.adapters.migration_workers import (
    RESUMABLE_STATES,
    CredentialSource,
    MigrationWorkers,
    NoStoredCredentials,
    RetryableFailure,
)
from mailmigrator.adapters.provisioning import (
    PasswdFileProvisioner,
    PostgresUsersProvisioner,
    Provisioner,
)
from mailmigrator.adapters.proxy import Listener, LoginProxy, ProxyLimits, server_ssl_context
from mailmigrator.adapters.throttle import LoginThrottle
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.errors import AccountNotFound
from mailmigrator.ops.config import Config, ConfigError, SourceConfig, TargetConfig, read_secret_file
from mailmigrator.ops.copying import build_copier, copy_plan, target_plan
from mailmigrator.ops.wiring import open_store

log = structlog.get_logger("mailmigrator.serve")

RUN_STATE_POLL = 1.0
PROJECTION_POLL = 2.0


@dataclass
class RunState:
    """The run's state as last read from the store."""

    state: str = "stopped"

    def __call__(self) -> str:
        return self.state


def source_address(source: SourceConfig, protocol: str) -> ServerAddress:
    port = source.pop3_port if protocol == "pop3" else source.imap_port
    return ServerAddress(source.host, port, source.tls, source.ca_file, source.verify_certificate)


def target_address(target: TargetConfig) -> ServerAddress:
    return ServerAddress(target.host, target.port, target.tls, target.ca_file, target.verify_certificate)


def _backend(address: ServerAddress) -> BackendAddress:
    context = tls_context(address) if address.tls != "disable" else None
    return BackendAddress(address.host, address.port, address.tls, context)


def build_provisioner(target: TargetConfig) -> Provisioner:
    if target.provisioning == "postgresql":
        provisioner = PostgresUsersProvisioner(target.postgresql_url, target.postgresql_table, target.password_scheme)
        provisioner.ensure_table()
        return provisioner
    if target.passwd_file is None:
        raise ConfigError("[target] provisioning = \"passwd-file\" needs passwd_file")
    return PasswdFileProvisioner(target.passwd_file, target.password_scheme)


def listeners_of(config: Config) -> list[Listener]:
    p = config.proxy
    return (
        [Listener("imap", e.host, e.port) for e in p.imap]
        + [Listener("imap", e.host, e.port, implicit_tls=True) for e in p.imaps]
        + [Listener("pop3", e.host, e.port) for e in p.pop3]
        + [Listener("pop3", e.host, e.port, implicit_tls=True) for e in p.pop3s]
    )


@dataclass
class Service:
    """Everything `serve` runs, built from the configuration."""

    config: Config
    app: MigrationService
    proxy: LoginProxy
    workers: MigrationWorkers
    run_state: RunState
    credentials: CredentialSource = field(default_factory=NoStoredCredentials)

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[list[tuple[Listener, int]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until cancelled; reports the bound listeners when ready."""
        store = self.workers.store
        self.run_state.state = (await store(self.app.run)).state
        views_limiter = trio.CapacityLimiter(1)
        from mailmigrator.projections.follower import MigrationViews

        views = await trio.to_thread.run_sync(lambda: MigrationViews(self.app, log_file=self.config.migration.log_file))
        async with trio.open_nursery() as nursery:
            await nursery.start(self.workers.run)
            nursery.start_soon(self._poll_run_state)
            nursery.start_soon(self._follow, views, views_limiter)
            locked: list[str] = []
            await trio.to_thread.run_sync(views.catch_up, limiter=views_limiter)
            for state in RESUMABLE_STATES:
                locked += [doc["login"] for doc in await trio.to_thread.run_sync(views.accounts, state, limiter=views_limiter)]
            resumed = self.workers.resume(self.credentials, locked)
            if locked:
                log.info("locked accounts", count=len(locked), resumed=len(resumed),
                         waiting_for_login=len(locked) - len(resumed))
            bound = await nursery.start(self.proxy.serve, listeners_of(self.config))
            task_status.started(bound)

    async def _poll_run_state(self) -> None:
        while True:
            await trio.sleep(RUN_STATE_POLL)
            try:
                state = (await self.workers.store(self.app.run)).state
            except Exception as e:  # a store hiccup must not stop the service
                log.warning("cannot read the run state", error=str(e))
                continue
            if state != self.run_state.state:
                log.info("run state changed", state=state, was=self.run_state.state)
                self.run_state.state = state

    async def _follow(self, views: object, limiter: trio.CapacityLimiter) -> None:
        while True:
            try:
                await trio.to_thread.run_sync(views.catch_up, limiter=limiter)  # type: ignore[attr-defined]
            except Exception as e:
                log.warning("projection catch-up failed", error=str(e))
            await trio.sleep(PROJECTION_POLL)


def build_service(config: Config, app: MigrationService, limits: ProxyLimits | None = None,
                  throttle: LoginThrottle | None = None) -> Service:
    """Wire the proxy, router, workers and copier from `config`."""
    source, target = config.source, config.target
    if source is None:
        raise ConfigError("[source] is missing: serve needs the old server")
    if target is None:
        raise ConfigError("[target] is missing: serve needs the new server")
    if not target.master_user:
        raise ConfigError("[target] master_user is missing: serve writes mailboxes through the Dovecot master user")
    master_password = read_secret_file(target.master_password_file, "[target] master_password_file")
    old_imap, old_pop3, new_imap = source_address(source, "imap"), source_address(source, "pop3"), target_address(target)
    warn_unverified(old_imap, "source")
    warn_unverified(new_imap, "target")
    provisioner = build_provisioner(target)
    m = config.migration
    store = StoreCalls(app)

    copier = build_copier(config, app)

    async def migrate_account(login: str, credentials: Credentials) -> None:
        # credentials.login is the name as the old server knows it (login_format applied).
        source_plan = copy_plan(config, credentials.login, login, credentials.password)
        result = await copier.copy_account(AccountJob(login, source_plan, target_plan(config, login)))
        if not result.ok:
            try:
                account = await store(app.account, login)
                retryable = account.failed_retryable
            except AccountNotFound:
                retryable = True
            if retryable:
                raise RetryableFailure(result.error or "copy failed")
            raise PermanentFailure(result.error or "copy failed")

    workers = MigrationWorkers(
        store, migrate_account, provisioner, concurrency=m.concurrency,
        is_retryable=lambda e: not isinstance(e, PermanentFailure),
    )
    run_state = RunState()
    backends = ServerBackends(
        old_imap=_backend(old_imap), old_pop3=_backend(old_pop3), new_imap=_backend(new_imap),
        master_user=target.master_user, master_password=master_password, migration_account=m.migration_account,
    )
    router = LoginRouter(
        store=store, backends=backends, migrations=workers,
        settings=RoutingSettings(
            primary_domain=m.primary_domain, domains=dict(m.domains), passwords_only=m.passwords_only,
            migration_account=m.migration_account, source_protocol=source.protocol, login_format=source.login_format,
        ),
        run_state=run_state, provisioner=provisioner,
    )
    p = config.proxy
    context = server_ssl_context(p.tls_cert, p.tls_key) if p.tls_cert and p.tls_key else None
    proxy = LoginProxy(
        router, throttle or LoginThrottle(), context, limits or ProxyLimits(), p.require_tls_for_login
    )
    return Service(config, app, proxy, workers, run_state)


class PermanentFailure(Exception):
    """A copy failure that retrying will not cure (recorded as not retryable)."""


async def serve(config: Config, ready: Callable[[list[tuple[Listener, int]]], None] | None = None) -> None:
    """Run the service until SIGINT or SIGTERM."""
    wired = open_store(config, create=True)
    assert wired is not None
    try:
        service = build_service(config, wired.app)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(service.run)
                if ready is not None:
                    ready(bound)

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        log.info("stopping", signal=signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)

                # --- admin console (issue 7): page, JSON API and /metrics on [admin] listen ---
                from mailmigrator.ops.console import run_console

                await nursery.start(run_console, config, wired)
                # --- end admin console ---
    finally:
        wired.close()
    log.info("stopped")


def cmd_serve(config: Config, args: object) -> int:
    """The `serve` command: run until SIGINT/SIGTERM; exit 0 on a graceful stop."""
    from mailmigrator.ops.logs import configure_logging

    configure_logging()

    def ready(bound: list[tuple[Listener, int]]) -> None:
        log.info("ready", listeners=[f"{l.protocol}{'s' if l.implicit_tls else ''}://{l.host}:{port}" for l, port in bound])

    trio.run(serve, config, ready)
    return 0


def put_notice(config: Config, message: bytes) -> int:
    """Replace the migration account's INBOX content with `message`; returns how many old notices were removed."""
    from mailmigrator.adapters.imap_connection import close_imap, open_imap

    account = config.migration.migration_account
    if not account:
        raise ConfigError("[migration] migration_account is not set; name the mailbox locked users are shown")
    target = config.target
    if target is None:
        raise ConfigError("[target] is missing: the notice goes into the migration account on the new server")
    client = open_imap(target_address(target), target_plan(config, account))
    try:
        client.select_folder("INBOX")
        old = client.search("ALL")
        client.append("INBOX", message, flags=())
        if old:
            client.delete_messages(old)
            client.expunge()
        return len(old)
    finally:
        close_imap(client)
