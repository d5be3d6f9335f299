"""Cutover-morning benchmark: many users log in through `serve` within moments while their mail moves.

Seeds USERS accounts of 25 messages in a private old Dovecot, runs `serve` (in
this process, `while_copying = "old-server"`, passwd-file provisioning) against
a fresh new Dovecot, measures one login through the proxy while the node is
idle (the baseline), then lets every user log in at once (IMAP LOGIN, SELECT
INBOX, LOGOUT, 50 at a time). Prints the login latencies (median, p99, worst)
as ratios to the baseline, how long until every account was switched over, and
the switch durations recorded in `SwitchedOver`. Nobody should wait at a login
for a copy; every switch should stay short. Not a test.

    .venv/bin/python bench/cutover_morning.py [--users N] [--engine imap|dovecot]
"""

from __future__ import annotations

import argparse
import imaplib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the Dovecot test bed
import testbed

from mailmigrator.adapters.proxy.listeners import ProxyLimits
from mailmigrator.adapters.proxy.throttle import LoginThrottle
from mailmigrator.ops.composition import open_store
from mailmigrator.ops.config import Endpoint, load_config
from mailmigrator.ops.serve import build_service

PASSWORD = "morning-password"
MESSAGES = 25
CLIENTS_AT_ONCE = 50


def login_once(port: int, login: str) -> float:
    """Seconds from connect to a selected INBOX through the proxy."""
    started = time.monotonic()
    client = imaplib.IMAP4("127.0.0.1", port, timeout=60)
    client.login(login, PASSWORD)
    client.select("INBOX", readonly=True)
    took = time.monotonic() - started
    client.logout()
    return took


def write_config(work: Path, old: testbed.DovecotServer, new: testbed.DovecotServer, engine: str,
                 concurrency: int = 8) -> Path:
    secret = work / "master.secret"
    secret.write_text(new.master_password or "")
    secret.chmod(0o600)
    path = work / "mm.toml"
    path.write_text(
        f'[store]\nurl = "sqlite:///{work / "events.sqlite"}"\n'
        f'[source]\nhost = "127.0.0.1"\nimap_port = {old.imap_port}\ntls = "disable"\nlogin_format = "email"\n'
        f'[target]\nhost = "127.0.0.1"\nport = {new.imap_port}\ntls = "disable"\n'
        f'master_user = "{new.master_user}"\nmaster_password_file = "{secret}"\n'
        f'provisioning = "passwd-file"\npasswd_file = "{new.passwd_file}"\n'
        f'engine = "{engine}"\ndoveadm_config = "{new.config_path}"\n'
        f'[proxy]\nimap = ["127.0.0.1:1"]\n'
        f'[migration]\nprimary_domain = "example.com"\nwhile_copying = "old-server"\nconcurrency = {concurrency}\n'
    )
    return path


async def morning(config_path: Path, users: list[str], baseline_user: str) -> None:
    config = load_config(config_path)
    config = config.model_copy(update={"proxy": config.proxy.model_copy(update={"imap": (Endpoint("127.0.0.1", 0),)})})
    store = open_store(config, create=True)
    assert store is not None
    store.app.start_run("bench")
    service = build_service(config, store.app, ProxyLimits(failure_delay=0.0),
                            # Users log in from many addresses on a real morning; here all come from one.
                            LoginThrottle(max_per_login=100, max_per_address=100_000,
                                          max_in_flight_per_address=CLIENTS_AT_ONCE))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(service.run)
        port = bound[0][1]
        baseline = await trio.to_thread.run_sync(login_once, port, baseline_user)
        await wait_switched(store.app, [baseline_user])
        baseline = min(baseline, await trio.to_thread.run_sync(login_once, port, baseline_user))
        latencies: list[float] = []
        limiter = trio.CapacityLimiter(CLIENTS_AT_ONCE)
        started = time.monotonic()

        async def one(login: str) -> None:
            latencies.append(await trio.to_thread.run_sync(login_once, port, login, limiter=limiter))

        async with trio.open_nursery() as logins:
            for login in users:
                logins.start_soon(one, login)
        logged_in = time.monotonic() - started
        await wait_switched(store.app, users)
        all_switched = time.monotonic() - started
        nursery.cancel_scope.cancel()
    report(store.app, users, baseline, latencies, logged_in, all_switched)
    store.close()


async def wait_switched(app: object, logins: list[str]) -> None:
    pending = set(logins)
    while pending:
        pending = {login for login in pending
                   if await trio.to_thread.run_sync(lambda login=login: app.account(login).state) != "completed"}  # type: ignore[attr-defined]
        if pending:
            await trio.sleep(0.5)


def report(app: object, users: list[str], baseline: float, latencies: list[float], logged_in: float,
           all_switched: float) -> None:
    ordered = sorted(latencies)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    median = statistics.median(ordered)
    switches = [vars(event)["duration_seconds"] for login in users
                for event in app.history(login) if type(event).__name__ == "SwitchedOver"]  # type: ignore[attr-defined]
    print(f"{len(users)} users, {MESSAGES} messages each, {CLIENTS_AT_ONCE} logging in at a time")
    print(f"unloaded login (connect to SELECT through the proxy): {baseline * 1000:.0f} ms")
    print(f"logins under the storm: median {median * 1000:.0f} ms ({median / baseline:.1f}x), "
          f"p99 {p99 * 1000:.0f} ms ({p99 / baseline:.1f}x), worst {ordered[-1] * 1000:.0f} ms")
    print(f"all {len(users)} logged in after {logged_in:.1f} s; all switched over after {all_switched:.1f} s "
          f"({len(users) / all_switched * 60:.0f} accounts/minute)")
    if switches:
        print(f"switches: median {statistics.median(switches):.3f} s, worst {max(switches):.3f} s "
              f"({len(switches)} recorded)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--engine", choices=("imap", "dovecot"), default="imap")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mmmorning-"))
    old = testbed.make_old_server(work / "old").start()
    new = testbed.make_new_server(work / "new")
    new.start()
    try:
        users = [f"user{i:04d}@example.com" for i in range(args.users + 1)]
        old.add_users({login: PASSWORD for login in users})
        started = time.monotonic()
        for login in users:
            testbed.seed_bulk(old, login, "INBOX", [testbed.make_message(f"{login}-{i}") for i in range(MESSAGES)])
        print(f"seeded {len(users)} accounts in {time.monotonic() - started:.0f} s")
        trio.run(morning, write_config(work, old, new, args.engine), users[1:], users[0])
        return 0
    finally:
        old.stop()
        new.stop()


if __name__ == "__main__":
    sys.exit(main())
