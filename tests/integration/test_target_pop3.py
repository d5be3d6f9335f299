"""With the contract's [target] (no pop3_port), a migrated POP3 user is served by the new server on its POP3 port."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest
import trio

from copy_testbed import FaultyRelay
from proxy_fixtures import OLD_PASSWORD, Pair, ensure_notice_account, pair, seed_user, with_free_ports, write_config  # noqa: F401

from mailmigrator.adapters.proxy.listeners import ProxyLimits
from mailmigrator.adapters.proxy.throttle import LoginThrottle
from mailmigrator.ops.config import load_config
from mailmigrator.ops.serve import build_service
from testbed import make_message, seed_bulk
from mailmigrator.ops.composition import open_store

pytestmark = pytest.mark.dovecot

# A loopback address of its own, so that the standard POP3 port on it is free for the new server.
NEW_HOST = "127.0.110.1"


def fetchmail_count(tmp: Path, port: int, user: str, password: str) -> int:
    """How many messages fetchmail sees in the POP3 mailbox, through the proxy."""
    rc = tmp / "fetchmailrc"
    rc.write_text(f'poll 127.0.0.1 service {port} protocol pop3 auth password user "{user}" password "{password}" sslproto ""\n')
    rc.chmod(0o600)
    run = subprocess.run(["fetchmail", "--check", "--nosyslog", "-f", str(rc)], capture_output=True, text=True,
                         timeout=60, env={"HOME": str(tmp), "PATH": "/usr/bin:/bin"})
    found = re.search(r"(\d+) messages? for", run.stdout + run.stderr)
    assert found, f"fetchmail exit {run.returncode}: {run.stdout}{run.stderr}"
    return int(found.group(1))


async def test_migrated_pop3_user_is_served_on_the_new_servers_standard_port(pair: Pair, tmp_path: Path) -> None:
    seed_user(pair, "paula@example.com", messages=2)
    ensure_notice_account(pair)
    config_path = write_config(tmp_path, pair, tls=False)
    text = config_path.read_text()
    imap_relay = FaultyRelay(("127.0.0.1", pair.new.imap_port), listen=(NEW_HOST, 0))
    pop3_relay = FaultyRelay(("127.0.0.1", pair.new.pop3_port), listen=(NEW_HOST, 110))
    target = re.search(r"\[target\]\n.*?\n\n", text, re.S)
    assert target is not None
    contract_target = (target.group(0).replace('host = "127.0.0.1"', f'host = "{NEW_HOST}"')
                       .replace(f"port = {pair.new.imap_port}\n", f"port = {imap_relay.port}\n"))
    contract_target = re.sub(r"pop3_port = \d+\n", "", contract_target)
    config_path.write_text(text.replace(target.group(0), contract_target))
    config = with_free_ports(load_config(config_path))
    assert config.target is not None and config.target.pop3_port == 110
    with imap_relay, pop3_relay:
        wired = open_store(config, create=True)
        assert wired is not None
        wired.app.start_run("test")
        service = build_service(config, wired.app, ProxyLimits(failure_delay=0.0, idle_timeout=2.0),
                                LoginThrottle(max_per_login=3, max_per_address=50))
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(service.run)
            port = next(p for l, p in bound if l.protocol == "pop3")
            # The first login starts the migration (and shows the notice mailbox meanwhile).
            await trio.to_thread.run_sync(fetchmail_count, tmp_path, port, "paula@example.com", OLD_PASSWORD)
            with trio.fail_after(60):
                while not (wired.app.has_account("paula@example.com")
                           and wired.app.account("paula@example.com").state == "completed"):
                    await trio.sleep(0.2)
            # Mail that only the new server has proves where the session lands.
            seed_bulk(pair.new, "paula@example.com", "INBOX", [make_message("only-on-new")])
            count = await trio.to_thread.run_sync(fetchmail_count, tmp_path, port, "paula@example.com", OLD_PASSWORD)
            assert count == 3
            nursery.cancel_scope.cancel()
        wired.close()
