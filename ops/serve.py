"""`mailmigrator serve`: proxy listeners, migration workers and projections in one trio nursery.

SIGINT/SIGTERM cancel the nursery: connections close, copies stop after
their last recorded checkpoint, and a restart resumes from there. The run
state (`start` / `stop` from another process) is polled every second.
"""

from __future__ import annotations

import functools
import signal
from datetime import datetime, timezone
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import structlog
import trio

from mailmigrator.adapters.mail.adaptive_limit import AdaptiveLimit
from mailmigrator.adapters.store.node_status import NodeStatusTable
from mailmigrator.adapters.proxy.backends import BackendAddress, ServerBackends
from mailmigrator.adapters.store.vault import CredentialVault, VaultError
from mailmigrator.adapters.mail.credentials import Credentials
from mailmigrator.adapters.proxy.login_routing import LoginRouter, RoutingSettings, StoreCalls
from mailmigrator.adapters.mail.connection import (
    ServerAddress,
    describe_error,
    source_login_name,
    tls_context,
    warn_unverified,
)
from mailmigrator.adapters.migration_workers import (
    RESUMABLE_STATES,
    CredentialSource,
    MigrationWorkers,
    NoStoredCredentials,
    RetryableFailure,
)
from mailmigrator.adapters.proxy.listeners import Listener, LoginProxy, ProxyLimits, server_ssl_context
from mailmigrator.adapters.proxy.throttle import LoginThrottle
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.errors import ExplainedError
from mailmigrator.ops.config import Config, ConfigError, SourceConfig, TargetConfig, read_secret_file
from mailmigrator.ops.copying import build_copier, target_plan
from mailmigrator.ops.finish import FinishReport, finish_migration
from mailmigrator.ops.migration_flow import MigrationFlow, build_provisioner, open_vault
from mailmigrator.ops.preflight import check_before_listening
from mailmigrator.ops.wiring import open_store
from mailmigrator.projections.accounts import expired_leases
from mailmigrator.projections.follower import MigrationViews

log = structlog.get_logger("mailmigrator.serve")

RUN_STATE_POLL = 1.0
NODE_REPORT_INTERVAL = 5.0
PROJECTION_POLL = 2.0
UNREADABLE_CREDENTIAL = ("the stored password does not decrypt with this node's [store] credential_key_file; "
                         "the account resumes at the user's next login")


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
    # The finish work for a Finish pressed elsewhere (console, another node's CLI), once claimed here.
    finish: Callable[[], Awaitable[FinishReport]] | None = None
    source_limit: AdaptiveLimit | None = None
    _nursery: trio.Nursery | None = None

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[list[tuple[Listener, int]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until cancelled; reports the bound listeners when ready."""
        store = self.workers.store
        self.run_state.state = (await store(self.app.run)).state
        views_limiter = trio.CapacityLimiter(1)

        views = await trio.to_thread.run_sync(lambda: MigrationViews(self.app, log_file=self.config.migration.log_file))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.workers.run)
            nursery.start_soon(self._poll_run_state)
            nursery.start_soon(self._follow, views, views_limiter)
            nursery.start_soon(self._take_over_expired, views, views_limiter)
            nursery.start_soon(self._report_node)
            locked: list[str] = []
            await trio.to_thread.run_sync(views.catch_up, limiter=views_limiter)
            for state in RESUMABLE_STATES:
                locked += [doc["login"] for doc in await trio.to_thread.run_sync(views.accounts, state, limiter=views_limiter)]
            found = await self._stored_credentials(locked)
            resumed = [login for login, c in found.items() if self.workers.begin(login, c)]
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
            if state == "finishing" and self.finish is not None and self._nursery is not None:
                node = self.config.migration.node_name
                if await self.workers.store(self.app.claim_finish, node):
                    log.info("finish work taken on", node=node)
                    self._nursery.start_soon(self._finish)

    async def _finish(self) -> None:
        assert self.finish is not None
        try:
            report = await self.finish()
        except Exception as e:  # recorded for the admin; the proxy keeps serving
            log.error("finish failed", error=describe_error(e))
            return
        log.info("finish completed", swept=report.swept, failed=len(report.failed))

    async def _report_node(self) -> None:
        """Write this node's live figures (adaptive limit, migrations) where `status` can read them."""
        table = await trio.to_thread.run_sync(NodeStatusTable.open, self.app.factory)
        while True:
            doc = {"migrating": len(self.workers.active()),
                   "source_limit": self.source_limit.snapshot() if self.source_limit is not None else None}
            try:
                await trio.to_thread.run_sync(table.report, self.config.migration.node_name, doc,
                                              datetime.now(timezone.utc))
            except Exception as e:  # a store hiccup must not stop the service
                log.warning("cannot report node status", error=str(e))
            await trio.sleep(NODE_REPORT_INTERVAL)

    async def _take_over_expired(self, views: MigrationViews, limiter: trio.CapacityLimiter) -> None:
        """Resume accounts whose node stopped renewing its lease (it died): the claim decides who wins."""
        m = self.config.migration
        while True:
            await trio.sleep(max(1.0, m.lease_seconds / 4))
            try:
                docs = await trio.to_thread.run_sync(views.accounts, None, limiter=limiter)
                orphans = expired_leases(docs, m.node_name, datetime.now(timezone.utc), m.lease_seconds)
                found = await self._stored_credentials(orphans)
            except Exception as e:  # a store hiccup must not stop the service
                log.warning("cannot look for expired leases", error=str(e))
                continue
            for login, credentials in found.items():
                if self.workers.begin(login, credentials):
                    log.info("taking over an account whose lease expired", login=login, node=m.node_name)

    async def _stored_credentials(self, logins: list[str]) -> dict[str, Credentials]:
        """The stored credentials of `logins`; one that does not decrypt is reported on its account, never fatal."""
        found: dict[str, Credentials] = {}
        unreadable: list[str] = []

        def read() -> None:  # the vault is read in a worker thread; `begin` must run in trio's
            for login in logins:
                try:
                    credentials = self.credentials.get(login)
                except VaultError:
                    unreadable.append(login)
                    continue
                if credentials is not None:
                    found[login] = credentials

        await trio.to_thread.run_sync(read)
        for login in unreadable:
            try:
                reported = await self.workers.store(self._report_unreadable, login)
            except Exception as e:  # a store hiccup must not stop the service
                log.warning("cannot record the unreadable credential", login=login, error=str(e))
                continue
            if reported:
                log.error("stored credential does not decrypt", login=login, node=self.config.migration.node_name,
                          hint="[store] credential_key_file differs between nodes, or the vault row is damaged")
        return found

    def _report_unreadable(self, login: str) -> bool:
        """A failure the admin sees on the account, recorded once (the scan repeats); False when already recorded."""
        if self.app.account(login).last_error == UNREADABLE_CREDENTIAL:
            return False
        self.app.record_failed(login, UNREADABLE_CREDENTIAL, True)
        return True

    async def _follow(self, views: object, limiter: trio.CapacityLimiter) -> None:
        while True:
            try:
                await trio.to_thread.run_sync(views.catch_up, limiter=limiter)  # type: ignore[attr-defined]
            except Exception as e:
                log.warning("projection catch-up failed", error=str(e))
            await trio.sleep(PROJECTION_POLL)


def proxy_limits(config: Config) -> ProxyLimits:
    """The proxy's connection limits as configured in `[proxy]`."""
    p = config.proxy
    return ProxyLimits(
        max_connections=p.max_connections, max_connections_per_address=p.max_connections_per_address,
        login_timeout=p.login_timeout, send_timeout=p.send_timeout, relay_send_timeout=p.relay_send_timeout,
    )


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
    flow = MigrationFlow(config, app, build_copier(config, app), provisioner=provisioner,
                         vault=open_vault(config, app))

    async def migrate_account(login: str, credentials: Credentials) -> None:
        # credentials.login is the name as the old server knows it (login_format applied).
        outcome = await flow.migrate(login, credentials)
        if outcome.busy:
            log.info("account held by another node", login=login, detail=outcome.message)
            return
        if not outcome.ok:
            if outcome.retryable:
                raise RetryableFailure(outcome.message)
            raise PermanentFailure(outcome.message)

    workers = MigrationWorkers(
        store, migrate_account, concurrency=m.concurrency,
        is_retryable=lambda e: not isinstance(e, PermanentFailure),
    )
    run_state = RunState()
    backends = ServerBackends(
        old_imap=_backend(old_imap), old_pop3=_backend(old_pop3), new_imap=_backend(new_imap),
        new_pop3=_backend(replace(new_imap, port=target.pop3_port)) if target.pop3_port else None,
        master_user=target.master_user, master_password=master_password, migration_account=m.migration_account,
    )
    router = LoginRouter(
        store=store, backends=backends, migrations=workers,
        settings=RoutingSettings(
            primary_domain=m.primary_domain, domains=dict(m.domains), passwords_only=m.passwords_only,
            migration_account=m.migration_account, source_protocol=source.protocol, login_format=source.login_format,
        ),
        run_state=run_state, provisioner=provisioner,
        remember_credentials=_remembering(flow) if flow.vault is not None else None,
        migrate_now=flow.migrate,
    )
    p = config.proxy
    context = server_ssl_context(p.tls_cert, p.tls_key) if p.tls_cert and p.tls_key else None
    proxy = LoginProxy(
        router, throttle or LoginThrottle(), context, limits or proxy_limits(config), p.require_tls_for_login
    )
    credentials: CredentialSource = StoredCredentials(config, flow.vault)
    views = MigrationViews(app, log_file=m.log_file)

    async def finish() -> FinishReport:
        return await finish_migration(config, app, views, flow)

    return Service(config, app, proxy, workers, run_state, credentials, finish, flow.copier.source_limit)


@dataclass
class StoredCredentials:
    """What a restarted `serve` resumes with: the vault's password, or the admin login (empty password)."""

    config: Config
    vault: CredentialVault | None

    def get(self, login: str) -> Credentials | None:
        name = source_login_name(login, login, self.config.source.login_format if self.config.source else "email")
        if self.vault is None:
            return Credentials(name, "")  # the source admin login copies; see copy_plan
        password = self.vault.get(login)
        return Credentials(name, password) if password is not None else None


def _remembering(flow: MigrationFlow) -> Callable[[str, str], Awaitable[None]]:
    """Keep the password of a completed (not yet swept) account at its login, so that `finish` can sweep it."""
    vault = flow.vault
    assert vault is not None
    limiter = trio.CapacityLimiter(1)

    async def remember(login: str, password: str) -> None:
        def put() -> None:
            try:
                kept = vault.get(login)
            except VaultError:  # damaged or sealed with another key: the verified password replaces it
                kept = None
            if kept is None:
                vault.put(login, password)
                log.info("credential kept for the finish sweep", login=login)

        await trio.to_thread.run_sync(put, limiter=limiter)

    return remember


class PermanentFailure(ExplainedError):
    """A copy failure that retrying will not cure (recorded as not retryable)."""


async def serve(config: Config, ready: Callable[[list[tuple[Listener, int]]], None] | None = None) -> None:
    """Run the service until SIGINT or SIGTERM; every file it needs is checked before the first port opens."""
    check_before_listening(config)
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

                await nursery.start(functools.partial(run_console, config, wired,
                                                      rejections=service.proxy.router.rejections))
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
    from mailmigrator.adapters.imap.connection import close_imap, open_imap

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
