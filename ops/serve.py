"""`mailmigrator serve`: proxy listeners, background migrations and projections in one trio nursery.

SIGINT/SIGTERM cancel the nursery: connections close, copies stop after
their last recorded checkpoint, and a restart resumes from there. The run
state (`start` / `stop` from another process) is polled every second.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import structlog
import trio

from mailmigrator.adapters.imap.connection import close_imap, open_imap
from mailmigrator.adapters.mail.connection import describe_error
from mailmigrator.adapters.proxy.listeners import Listener, LoginProxy, ProxyLimits
from mailmigrator.adapters.proxy.throttle import LoginThrottle
from mailmigrator.adapters.store.node_status import NodeStatusTable
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.use_cases.switch_over import close_moved_sessions
from mailmigrator.ops.composition import Node, build_node, mail_servers, open_store, proxy_limits, target_address
from mailmigrator.ops.config import Config, ConfigError
from mailmigrator.ops.finish import FinishReport, finish_migration
from mailmigrator.ops.open_files import OpenFilePlan, fit_open_files
from mailmigrator.ops.preflight import check_before_listening
from mailmigrator.projections.follower import MigrationViews

log = structlog.get_logger("mailmigrator.serve")

RUN_STATE_POLL = 1.0
NODE_REPORT_INTERVAL = 5.0
PROJECTION_POLL = 2.0
# How often a node looks whether accounts it relays to the old server were switched elsewhere.
MOVED_SESSIONS_POLL = 2.0


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
    """The tasks of one `serve` node over the objects its composition root built."""

    node: Node
    _nursery: trio.Nursery | None = field(default=None, repr=False)

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[list[tuple[Listener, int]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until cancelled; reports the bound listeners when ready."""
        node = self.node
        node.run_state.state = (await node.records.run()).state
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(node.queue.run)
            nursery.start_soon(self._poll_run_state)
            nursery.start_soon(self._follow)
            nursery.start_soon(self._take_over_expired)
            nursery.start_soon(self._report_node)
            nursery.start_soon(self._close_moved_sessions)
            await node.takeover.resume_locked()
            bound = await nursery.start(node.proxy.serve, listeners_of(node.config))
            task_status.started(bound)

    @property
    def proxy(self) -> LoginProxy:
        return self.node.proxy

    @property
    def app(self) -> MigrationService:
        return self.node.app

    async def _poll_run_state(self) -> None:
        node = self.node
        while True:
            await trio.sleep(RUN_STATE_POLL)
            try:
                state = (await node.records.run()).state
            except Exception as e:  # a store hiccup must not stop the service
                log.warning("cannot read the run state", error=describe_error(e))
                continue
            if state != node.run_state.state:
                log.info("run state changed", state=state, was=node.run_state.state)
                node.run_state.state = state
            if state == "finishing" and self._nursery is not None:
                name = node.config.migration.node_name
                if await node.records.in_thread(lambda: node.app.claim_finish(name)):
                    log.info("finish work taken on", node=name)
                    self._nursery.start_soon(self._finish)

    async def _finish(self) -> None:
        node = self.node
        try:
            report: FinishReport = await finish_migration(node.config, node.app, node.views, node.migration)
        except Exception as e:  # recorded for the admin; the proxy keeps serving
            log.error("finish failed", error=describe_error(e))
            return
        log.info("finish completed", swept=report.swept, failed=len(report.failed))

    async def _report_node(self) -> None:
        """Write this node's live figures (adaptive limit, migrations) where `status` can read them."""
        node = self.node
        table = await trio.to_thread.run_sync(NodeStatusTable.open, node.app.factory)
        limit = node.migration.limit
        while True:
            doc = {"migrating": len(node.queue.active()),
                   "source_limit": limit.snapshot() if limit is not None else None}
            try:
                await trio.to_thread.run_sync(table.report, node.config.migration.node_name, doc,
                                              datetime.now(timezone.utc))
            except Exception as e:  # a store hiccup must not stop the service
                log.warning("cannot report node status", error=describe_error(e))
            await trio.sleep(NODE_REPORT_INTERVAL)

    async def _take_over_expired(self) -> None:
        node = self.node
        while True:
            await trio.sleep(max(1.0, node.config.migration.lease_seconds / 4))
            try:
                await node.takeover.take_over_expired(datetime.now(timezone.utc))
            except Exception as e:  # a store hiccup must not stop the service
                log.warning("cannot look for expired leases", error=describe_error(e))

    async def _close_moved_sessions(self) -> None:
        """Close relays to the old server whose account another node (or `migrate`) switched."""
        node = self.node
        while True:
            await trio.sleep(MOVED_SESSIONS_POLL)
            try:
                await close_moved_sessions(node.records, node.proxy.old_relays)
            except Exception as e:  # a store hiccup must not stop the service
                log.warning("cannot look for moved accounts", error=describe_error(e))

    async def _follow(self) -> None:
        while True:
            try:
                await self.node.records.in_thread(self.node.views.catch_up)
            except Exception as e:
                log.warning("projection catch-up failed", error=describe_error(e))
            await trio.sleep(PROJECTION_POLL)


def _log_open_files(plan: OpenFilePlan) -> None:
    """What fitting the connection cap to the open-file limit changed."""
    if plan.raise_soft_to is not None:
        log.info("open files limit raised", soft=plan.raise_soft_to, was=plan.soft)
    if plan.lowered_from is not None:
        log.warning("max_connections lowered to fit the open files limit", max_connections=plan.max_connections,
                    default=plan.lowered_from, open_files=plan.raise_soft_to or plan.soft)
    if plan.relayed_fit < plan.max_connections:
        log.warning("open files limit holds fewer relayed connections than max_connections",
                    relayed=plan.relayed_fit, max_connections=plan.max_connections)


def build_service(config: Config, app: MigrationService, limits: ProxyLimits | None = None,
                  throttle: LoginThrottle | None = None, views: MigrationViews | None = None) -> Service:
    """The `serve` node for `config` over the store behind `app` (and its `views`, when already open)."""
    return Service(build_node(config, app, limits, throttle, views))


async def serve(config: Config, ready: Callable[[list[tuple[Listener, int]]], None] | None = None) -> None:
    """Run the service until SIGINT or SIGTERM; every file it needs is checked before the first port opens."""
    check_before_listening(config)
    plan = fit_open_files(config)
    wired = open_store(config, create=True)
    assert wired is not None
    try:
        limits = replace(proxy_limits(config), max_connections=plan.max_connections)
        service = build_service(config, wired.app, limits, views=wired.views)
        # Logged once the node is built: a refused store or vault key stays the one line printed.
        _log_open_files(plan)
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

                from mailmigrator.ops.console import run_console

                await nursery.start(functools.partial(run_console, config, wired,
                                                      rejections=service.node.first_login.rejections,
                                                      migration=service.node.migration))
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
    account = config.migration.migration_account
    if not account:
        raise ConfigError("[migration] migration_account is not set; name the mailbox locked users are shown")
    target = config.target
    if target is None:
        raise ConfigError("[target] is missing: the notice goes into the migration account on the new server")
    client = open_imap(target_address(target), mail_servers(config).target_plan(account))
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
