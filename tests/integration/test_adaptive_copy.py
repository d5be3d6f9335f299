"""The copy engine against an old server that refuses connections beyond a limit: the adaptive cap meets fewer refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from copy_testbed import message_count, new_user, write_config
from fault_relay import FaultRelay
from mailmigrator.adapters.mail.copier import AccountJob
from mailmigrator.domain.application import MigrationService
import testbed
from mailmigrator.ops.config import load_config
from mailmigrator.ops.composition import copy_engine, mail_servers, source_limit

pytestmark = pytest.mark.dovecot

ACCOUNTS = 8
FOLDERS = ("INBOX", "Work", "Lists", "Travel")


async def copy_through(relay: FaultRelay, tmp: Path, old: testbed.DovecotServer, new: testbed.DovecotServer,
                       adaptive: bool) -> tuple[int, int, list[tuple[str, int]]]:
    """Copy ACCOUNTS fresh accounts through `relay`; (refusals, failed accounts, (login, messages) per account)."""
    tmp.mkdir()
    path = write_config(tmp, old, new, source_port=relay.port, tls="disable",
                        migration=f"concurrency = {ACCOUNTS}\nconnections_per_source_host = 8\n"
                                  f"adaptive_connections = {'true' if adaptive else 'false'}\n")
    config = load_config(path)
    app = MigrationService()
    users = []
    for _ in range(ACCOUNTS):
        login, password = new_user(old, new)
        for folder in FOLDERS:
            testbed.seed_bulk(old, login, folder, [testbed.make_message(f"{login}-{folder}-{i}") for i in range(15)])
        app.record_password_verified(login, "test")
        app.record_account_created(login, login, [], "existing")
        users.append((login, password))
    servers = mail_servers(config)
    copier = copy_engine(config, app, servers, source_limit(config))
    # Every folder over a connection of its own, as a big account's copy does: the old server's limit is met
    # by one account's connections too, not only by the accounts' first connections at once.
    copier.settings = dataclasses.replace(copier.settings, bytes_per_folder_connection=1)
    jobs = [AccountJob(login, servers.copy_plan(servers.source_name(login, login), login, password), servers.target_plan(login))
            for login, password in users]
    refused_before = relay.refused
    results = await copier.copy_accounts(jobs)
    counts = [(login, message_count(new, login)) for login, _ in users]
    return relay.refused - refused_before, sum(not r.ok for r in results), counts


async def test_adaptive_cap_meets_fewer_refusals_than_a_fixed_cap(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path
) -> None:
    upstream = ("127.0.0.1", old_server.imap_port)
    with FaultRelay(upstream, max_connections=3, overflow="bye") as relay:
        fixed_refused, fixed_failed, _ = await copy_through(relay, tmp_path / "fixed", old_server, new_server, False)
    with FaultRelay(upstream, max_connections=3, overflow="bye") as relay:
        adaptive_refused, adaptive_failed, counts = await copy_through(
            relay, tmp_path / "adaptive", old_server, new_server, True)
        assert relay.peak <= 3
    print(f"refusals: fixed {fixed_refused} ({fixed_failed} accounts failed), "
          f"adaptive {adaptive_refused} ({adaptive_failed} failed)")
    assert adaptive_failed == 0
    assert all(n == 15 * len(FOLDERS) for _, n in counts), counts
    assert fixed_refused > 0, "the fixed cap of 8 must run into the old server's limit of 3"
    assert adaptive_refused + adaptive_failed < fixed_refused + fixed_failed
