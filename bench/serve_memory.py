"""Memory benchmark: `serve`'s peak RSS with N accounts in its views, against `serve` with none.

    .venv/bin/python bench/serve_memory.py [--accounts 100000]

Runs `mailmigrator serve` as a process of its own twice, over a private old and new Dovecot:
once on an empty store (the baseline), once with N account rows written into its views the
way bench/read_side.py writes them. Each time the console is asked for its account pages,
`/api/run` and `/metrics`, one user logs in through the proxy and is migrated, and the
process's peak RSS (VmHWM) is read. Target: at most 250 MB with 100,000 accounts. Ends with
`verify` of the migrated user (exit 0 = equal). Not a test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from copy_speed import CLI
from cutover_morning import PASSWORD, login_once, write_config
from proxy import free_port
from read_side import fill

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the Dovecot test bed
import testbed

from mailmigrator.domain.states import SETTLED_STATES
from mailmigrator.ops.composition import open_store
from mailmigrator.ops.config import load_config
from mailmigrator.ops.console.auth import write_password_file

ADMIN_PASSWORD = "bench-admin-password"
PROBE = "probe@example.com"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def store_with_accounts(work: Path, old: testbed.DovecotServer, new: testbed.DovecotServer,
                        accounts: int) -> tuple[Path, int, int]:
    """A config of its own in `work`, its store's views holding `accounts` rows; (config, proxy port, console port)."""
    work.mkdir(parents=True)
    config_path = write_config(work, old, new, "imap", concurrency=4)
    imap_port, admin_port = free_port(), free_port()
    write_password_file(work / "admin.secret", ADMIN_PASSWORD)
    text = config_path.read_text().replace('imap = ["127.0.0.1:1"]', f'imap = ["127.0.0.1:{imap_port}"]')
    config_path.write_text(text + f'[admin]\nlisten = ["127.0.0.1:{admin_port}"]\n'
                                  f'password_file = "{work / "admin.secret"}"\n')
    store = open_store(load_config(config_path), create=True)
    assert store is not None
    store.app.start_run("bench")
    store.views.catch_up()
    if accounts:
        fill(store.views.store, accounts)
    store.close()
    return config_path, imap_port, admin_port


def console_reads(client: httpx.Client, accounts: int) -> None:
    for offset in (0, accounts // 2, max(0, accounts - 50)):
        client.get("/api/accounts", params={"offset": offset}).raise_for_status()
    client.get("/api/accounts", params={"state": "failed"}).raise_for_status()
    client.get("/api/run").raise_for_status()
    client.get("/metrics").raise_for_status()


def state_of(client: httpx.Client, login: str) -> str | None:
    response = client.get(f"/api/accounts/{login}")
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise RuntimeError(f"/api/accounts/{login}: {response.status_code} {response.text[:200]}")
    state: str = response.json()["state"]
    return state


def serve_peak_rss(config_path: Path, imap_port: int, admin_port: int, accounts: int) -> float:
    """Peak RSS in MB of `serve` after console reads and one user's migration through the proxy."""
    serve = subprocess.Popen([*CLI, "--config", str(config_path), "serve"], stdout=subprocess.DEVNULL,
                             stderr=open(config_path.parent / "serve.log", "w"), text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    response = client.post("/api/login", json={"password": ADMIN_PASSWORD})
                    break
                except httpx.TransportError:
                    if serve.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"serve did not start; see {config_path.parent / 'serve.log'}")
                    time.sleep(0.2)
            response.raise_for_status()
            client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
            console_reads(client, accounts)
            login_once(imap_port, PROBE)
            while state_of(client, PROBE) not in SETTLED_STATES:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{PROBE} was not migrated within 120 s")
                time.sleep(0.2)
            console_reads(client, accounts)
        return peak_rss_mb(serve.pid)
    finally:
        serve.terminate()
        serve.wait(timeout=30)


def verified(config_path: Path) -> bool:
    return subprocess.run([*CLI, "--config", str(config_path), "verify", PROBE, "--password-stdin"],
                          input=PASSWORD + "\n", capture_output=True, text=True).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mm-serve-memory-"))
    old = testbed.make_old_server(work / "old").start()
    old.add_users({PROBE: PASSWORD})
    testbed.seed_bulk(old, PROBE, "INBOX", [testbed.make_message(f"probe-{i}") for i in range(25)])
    figures, equal = {}, True
    try:
        for accounts in (0, args.accounts):
            new = testbed.make_new_server(work / f"new-{accounts}")
            new.start()
            try:
                config_path, imap_port, admin_port = store_with_accounts(work / f"run-{accounts}", old, new, accounts)
                figures[accounts] = serve_peak_rss(config_path, imap_port, admin_port, accounts)
                equal = verified(config_path) and equal
            finally:
                new.stop()
    finally:
        old.stop()
    empty, full = figures[0], figures[args.accounts]
    print(f"serve, empty views (baseline):        peak RSS {empty:6.1f} MB")
    print(f"serve, {args.accounts:,} accounts in views:  peak RSS {full:6.1f} MB   {full / empty:.2f}x the baseline"
          f"   [target: 250 MB]")
    print(f"verify {PROBE}: {'equal' if equal else 'DIFFERENT'} (both runs)")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
