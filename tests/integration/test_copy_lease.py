"""A copy slower than its lease: the node renews the lease before it writes, and stops writing once taken over."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import trio

from copy_testbed import FaultyRelay, message_count, new_user, write_config
from mailmigrator.adapters.mail.copier import AccountJob, AccountResult, MailboxCopier
from mailmigrator.domain.application import MigrationService
import testbed
from mailmigrator.ops.config import load_config
from mailmigrator.ops.composition import copy_engine, mail_servers, source_limit

pytestmark = pytest.mark.dovecot

MESSAGES = 60
BATCH = 10
LEASE = 0.8


def slow_copy(tmp: Path, old: testbed.DovecotServer, new: testbed.DovecotServer,
              relay: FaultyRelay) -> tuple[MigrationService, MailboxCopier, AccountJob]:
    """A fresh account of MESSAGES messages, and a copier whose only reason to checkpoint is its lease."""
    login, password = new_user(old, new)
    testbed.seed_bulk(old, login, "INBOX", [testbed.make_message(f"{login}-{i}", size=5_000) for i in range(MESSAGES)])
    config = load_config(write_config(tmp, old, new, source_port=relay.port, tls="disable",
                                      migration='node_name = "node-a"\n'))
    app = MigrationService()
    app.record_password_verified(login, "test")
    app.record_account_created(login, login, [], "existing")
    servers = mail_servers(config)
    copier = copy_engine(config, app, servers, source_limit(config))
    copier.settings = replace(copier.settings, lease_seconds=LEASE, checkpoint_interval=1000.0,
                              batch_messages=BATCH, folder_connections=1)
    return app, copier, AccountJob(login, servers.copy_plan(servers.source_name(login, login), login, password), servers.target_plan(login))


async def test_a_copy_slower_than_half_its_lease_renews_it_before_writing(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path
) -> None:
    # About 100 kB/s: each batch of ten 5 kB messages takes longer to fetch than half the lease.
    with FaultyRelay(("127.0.0.1", old_server.imap_port), bytes_per_second=100_000) as relay:
        app, copier, job = slow_copy(tmp_path, old_server, new_server, relay)
        result = await copier.copy_account(job)
    assert result.ok, result.error
    renewals = [e for e in app.history(job.login) if type(e).__name__ == "FolderCopied" and not e.done]
    # Without renewals the only checkpoints would be each folder's final one.
    assert len(renewals) >= MESSAGES // BATCH // 2, [e.highest_uid for e in renewals]
    assert message_count(new_server, job.login) == MESSAGES


async def test_a_node_taken_over_while_it_fetched_writes_nothing_more(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path
) -> None:
    with FaultyRelay(("127.0.0.1", old_server.imap_port), bytes_per_second=100_000) as relay:
        app, copier, job = slow_copy(tmp_path, old_server, new_server, relay)
        outcome: list[AccountResult] = []
        at_takeover = 0

        async def copy() -> None:
            outcome.append(await copier.copy_account(job))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy)
            while (at_takeover := await trio.to_thread.run_sync(message_count, new_server, job.login)) == 0:
                await trio.sleep(0.05)
            # Node B finds node A's lease expired (by its clock) and takes the account over.
            await trio.to_thread.run_sync(lambda: app.record_migration_started(
                job.login, [], 0, 0, node="node-b", now=datetime.now(timezone.utc) + timedelta(minutes=1),
                lease_seconds=LEASE), limiter=copier.store_limiter)
    [result] = outcome
    assert result.busy and not result.ok, result
    # At most the batch whose APPEND was already under way lands after the takeover.
    after = message_count(new_server, job.login)
    assert at_takeover <= after <= at_takeover + BATCH < MESSAGES, (at_takeover, after)
    assert app.account(job.login).node == "node-b"
