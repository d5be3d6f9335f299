"""Real mail programs through `serve` while their user's mailbox moves: they never notice.

getmail6 (POP3, leave on server) and mbsync (IMAP with a local cache) run before the migration
against the old server, through the proxy while the copy runs (the user stays on the old server),
after the switch, and finally against the new Dovecot directly: nothing is fetched or downloaded
twice, every run succeeds, and what changed on the old server during the copy reaches the client.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from mailmigrator.adapters.proxy.listeners import ProxyLimits
from mailmigrator.adapters.proxy.throttle import LoginThrottle
from mailmigrator.ops.composition import open_store
from mailmigrator.ops.config import load_config
from mailmigrator.ops.serve import Service, build_service
from mail_clients import Getmail, Mbsync, ServerEndpoint
from proxy_fixtures import OLD_PASSWORD, Pair, pair, seed_user, with_free_ports, write_config
from testbed import make_message, seed_bulk

pytestmark = pytest.mark.dovecot
__all__ = ["pair"]

LOCAL = "127.0.0.1"


def identity_config(tmp: Path, pair: Pair) -> Path:
    """The proxy config with the Dovecot engine (old UIDs and UIDVALIDITY kept) and users kept on the old server."""
    path = write_config(tmp, pair, while_copying="old-server", tls=False)
    engine = f'engine = "dovecot"\ndoveadm_config = "{pair.new.config_path}"\n'
    path.write_text(path.read_text().replace("[target]\n", "[target]\n" + engine, 1))
    return path


async def serve(tmp: Path, pair: Pair, nursery: trio.Nursery) -> tuple[Service, dict[str, int]]:
    config = with_free_ports(load_config(identity_config(tmp, pair)))
    store = open_store(config, create=True)
    assert store is not None
    store.app.start_run("test")
    service = build_service(config, store.app, ProxyLimits(failure_delay=0.0, idle_timeout=5.0),
                            LoginThrottle(max_per_login=20, max_per_address=100))
    bound = await nursery.start(service.run)
    return service, {listener.protocol: port for listener, port in bound}


async def wait_switched(service: Service, login: str, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while not (service.app.has_account(login)
                   and (await trio.to_thread.run_sync(service.app.account, login)).state == "completed"):
            await trio.sleep(0.2)


async def test_a_pop3_client_that_leaves_mail_on_the_server_fetches_nothing_twice(pair: Pair, tmp_path: Path) -> None:
    login = "gail@example.com"
    seed_user(pair, login, messages=6)
    getmail = Getmail(tmp_path / "getmail", ServerEndpoint(LOCAL, pair.old.pop3_port), login, OLD_PASSWORD)
    before = await trio.to_thread.run_sync(getmail.fetch)
    assert before.returncode == 0 and before.retrieved == 6, before.describe()
    seed_bulk(pair.old, login, "INBOX", [make_message("gail-meanwhile", subject="arrived meanwhile")])
    async with trio.open_nursery() as nursery:
        service, ports = await serve(tmp_path, pair, nursery)
        getmail.move_to(ServerEndpoint(LOCAL, ports["pop3"]))
        during = await trio.to_thread.run_sync(getmail.fetch)
        assert during.returncode == 0 and during.retrieved == 1, during.describe()
        await wait_switched(service, login)
        after = await trio.to_thread.run_sync(getmail.fetch)
        assert after.returncode == 0 and after.retrieved == 0, after.describe()
        nursery.cancel_scope.cancel()
    getmail.move_to(ServerEndpoint(LOCAL, pair.new.pop3_port))
    direct = await trio.to_thread.run_sync(getmail.fetch)
    assert direct.returncode == 0 and direct.retrieved == 0, direct.describe()
    delivered = getmail.delivered_messages()
    assert len(delivered) == 7 and len(set(delivered)) == 7


async def test_an_imap_client_with_a_local_cache_syncs_through_the_move_and_downloads_nothing_again(
    pair: Pair, tmp_path: Path
) -> None:
    login = "milo@example.com"
    seed_user(pair, login, messages=5)
    mbsync = Mbsync(tmp_path / "mbsync", ServerEndpoint(LOCAL, pair.old.imap_port), login, OLD_PASSWORD)
    before = await trio.to_thread.run_sync(mbsync.sync)
    assert before.returncode == 0 and before.downloaded_total == 7, before.describe()
    with pair.old.imap(login) as client:
        client.select_folder("INBOX")
        flagged, gone = sorted(client.search("ALL"))[:2]
    async with trio.open_nursery() as nursery:
        service, ports = await serve(tmp_path, pair, nursery)
        mbsync.move_to(ServerEndpoint(LOCAL, ports["imap"]))
        # mbsync pauses a second, logged in, when its Maildir changed in the current second; the switch,
        # which follows the copy within a second here, would close that idle session under it.
        await trio.sleep(1.1)
        during = await trio.to_thread.run_sync(mbsync.sync)
        assert during.returncode == 0 and during.downloaded_total == 0, during.describe()
        # The user goes on working on the old server while the copy runs.
        with pair.old.imap(login) as client:
            client.select_folder("INBOX")
            client.add_flags([flagged], [b"\\Flagged"])
            client.delete_messages([gone])
            client.expunge()
        await wait_switched(service, login)
        after = await trio.to_thread.run_sync(mbsync.sync)
        assert after.returncode == 0 and after.downloaded_total == 0, after.describe()
        assert "F" in mbsync.local_flags("INBOX")[flagged]
        assert gone not in mbsync.local_uids("INBOX")
        nursery.cancel_scope.cancel()
    with pair.new.imap(login) as client:
        client.select_folder("INBOX", readonly=True)
        assert gone not in client.search("ALL")
        assert b"\\Flagged" in client.get_flags([flagged])[flagged]
    mbsync.move_to(ServerEndpoint(LOCAL, pair.new.imap_port))
    direct = await trio.to_thread.run_sync(mbsync.sync)
    assert direct.returncode == 0 and direct.downloaded_total == 0, direct.describe()
