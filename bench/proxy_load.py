"""Benchmark: the proxy under load, against Dovecot directly in the same run.

Run as root: /tmp/venv/bin/python bench/proxy_load.py [--idle 400] [--active 100] [--seconds 10]

Load: `--idle` connections that connect, read the greeting, ask CAPABILITY and then sit
idle before login, plus `--active` logged-in connections looping NOOP / SELECT / FETCH
with a 0.1 s pause per round. Under that load, 100 further logins are timed one after
another (p50 / p99).
The proxy's memory per connection is its RSS growth while the load connects, divided
by the connections. The same load then runs straight against the new Dovecot.
The proxy runs as its own `mailmigrator serve` process, as in production.
"""

from __future__ import annotations

import argparse
import imaplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the Dovecot test bed

from proxy_fixtures import OLD_PASSWORD, Pair, start_pair, write_config  # noqa: E402

from testbed import make_message, seed_bulk  # noqa: E402
from proxy import free_port, wait_port  # noqa: E402  (the script beside this one)

USERS = 20  # active connections are spread over these (Dovecot allows 100 per user and IP)
LOGIN_SAMPLES = 100
ACTIVE_PAUSE = 0.1
DIRECT_IDLE_CAP = 0


@dataclass
class LoadResult:
    idle_connected: int = 0
    active_connected: int = 0
    operations: int = 0
    errors: int = 0
    logins: list[float] = field(default_factory=list)
    rss_before_kb: int = 0
    rss_idle_kb: int = 0
    rss_loaded_kb: int = 0


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def idle_connection(port: int) -> socket.socket | None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if not sock.recv(256).startswith(b"* OK"):
            sock.close()
            return None
        sock.sendall(b"a CAPABILITY\r\n")
        reply = b""
        while b"a OK" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                sock.close()
                return None
            reply += chunk
        return sock
    except OSError:
        return None


def run_load(port: int, users: list[str], idle: int, active: int, seconds: float, pid: int | None) -> LoadResult:
    result = LoadResult()
    if pid is not None:
        result.rss_before_kb = rss_kb(pid)
    with ThreadPoolExecutor(50) as pool:
        idles = [s for s in pool.map(lambda _: idle_connection(port), range(idle)) if s is not None]
    result.idle_connected = len(idles)
    print(f"  {len(idles)} of {idle} idle connections open", file=sys.stderr, flush=True)
    if pid is not None:
        result.rss_idle_kb = rss_kb(pid)
    stop = threading.Event()
    ready = threading.Barrier(active + 1, timeout=120)
    lock = threading.Lock()

    def worker(n: int) -> None:
        client = None
        try:
            client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
            client.login(users[n % len(users)], OLD_PASSWORD)
            with lock:
                result.active_connected += 1
        except Exception:  # noqa: BLE001 - counted
            with lock:
                result.errors += 1
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            return
        done = 0
        while client is not None and not stop.is_set():
            try:
                client.noop()
                client.select("INBOX", readonly=True)
                client.fetch("1:*", "(FLAGS RFC822.SIZE)")
                client.fetch("1", "(BODY.PEEK[])")
                done += 4
                # A mail client pauses between commands; a busy loop of 100 threads would
                # starve this process's own timed logins of the GIL instead of loading the server.
                stop.wait(ACTIVE_PAUSE)
            except Exception:  # noqa: BLE001 - counted
                with lock:
                    result.errors += 1
                break
        with lock:
            result.operations += done
        if client is not None:
            try:
                client.logout()
            except Exception:  # noqa: BLE001
                pass

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(active)]
    for t in threads:
        t.start()
    ready.wait()
    print(f"  {result.active_connected} of {active} active connections logged in", file=sys.stderr, flush=True)
    if pid is not None:
        result.rss_loaded_kb = rss_kb(pid)
    started = time.monotonic()
    for n in range(LOGIN_SAMPLES):
        t0 = time.perf_counter()
        client = imaplib.IMAP4("127.0.0.1", port, timeout=15)
        client.login(users[n % len(users)], OLD_PASSWORD)
        result.logins.append(time.perf_counter() - t0)
        client.logout()
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    stop.set()
    for t in threads:
        t.join()
    result.operations = int(result.operations / max(seconds, time.monotonic() - started))
    for s in idles:
        s.close()
    return result


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def serve_passwords_only(work: Path, pair: Pair, users: list[str], stderr: Any) -> tuple[subprocess.Popen[bytes], int]:
    """`mailmigrator serve` (passwords_only, plain IMAP) started, with `users` on the old server logged in once
    through it, which sets their passwords on the new one; the process and its IMAP port."""
    mailmigrator = str(Path(sys.executable).parent / "mailmigrator")
    pair.old.add_users({u: OLD_PASSWORD for u in users})
    config_path = write_config(work, pair, passwords_only=True, tls=False)
    proxy_port, pop_port = free_port(), free_port()
    text = config_path.read_text().replace('imap = ["127.0.0.1:1"]', f'imap = ["127.0.0.1:{proxy_port}"]')
    config_path.write_text(text.replace('pop3 = ["127.0.0.1:1"]', f'pop3 = ["127.0.0.1:{pop_port}"]'))
    server = subprocess.Popen([mailmigrator, "--config", str(config_path), "serve"], stderr=stderr)
    try:
        subprocess.run([mailmigrator, "--config", str(config_path), "start"], check=True, capture_output=True)
        wait_port(proxy_port)
        time.sleep(1.5)  # serve polls the run state once a second
        for user in users:
            imaplib.IMAP4("127.0.0.1", proxy_port).login(user, OLD_PASSWORD)
        time.sleep(1.5)
    except BaseException:
        server.terminate()
        server.wait(30)
        raise
    return server, proxy_port


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=int, default=400)
    parser.add_argument("--active", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmbench-") as tmp:
        work = Path(tmp)
        for pair in start_pair(work / "pair"):
            users = [f"load{n}@example.com" for n in range(USERS)]
            server, proxy_port = serve_passwords_only(work, pair, users, subprocess.DEVNULL)
            try:
                for user in users:
                    seed_bulk(pair.new, user, "INBOX", [make_message(f"{user}-{i}", size=4096) for i in range(20)])
                direct_port = pair.new.imap_port
                assert direct_port is not None
                run_load(proxy_port, users, 0, 10, 1.0, None)  # warm up
                print("proxy run ...", file=sys.stderr, flush=True)
                proxied = run_load(proxy_port, users, args.idle, args.active, args.seconds, server.pid)
                print("direct run ...", file=sys.stderr, flush=True)
                # This Dovecot has default_process_limit = 200 and one imap-login process per
                # pre-auth connection, so idle pre-auth connections starve its logins (seen with 80): direct runs without them.
                direct = run_load(direct_port, users, min(args.idle, DIRECT_IDLE_CAP), args.active, args.seconds, None)
            finally:
                server.terminate()
                server.wait(30)
    connections = proxied.idle_connected + proxied.active_connected
    print(f"load: {args.idle} idle pre-auth (direct: at most {DIRECT_IDLE_CAP}) + {args.active} active "
          f"(NOOP/SELECT/FETCH) connections, {LOGIN_SAMPLES} timed logins under that load, {args.seconds:.0f} s")
    for name, r in (("direct", direct), ("proxy ", proxied)):
        print(f"{name}  connected {r.idle_connected} idle + {r.active_connected} active, errors {r.errors}, "
              f"login p50 {quantile(r.logins, 0.5):6.2f} ms p99 {quantile(r.logins, 0.99):6.2f} ms, "
              f"{r.operations:,} commands/s")
    print(f"login p50 overhead {quantile(proxied.logins, 0.5) - quantile(direct.logins, 0.5):.2f} ms, "
          f"p99 overhead {quantile(proxied.logins, 0.99) - quantile(direct.logins, 0.99):.2f} ms; "
          f"commands/s proxy/direct {proxied.operations / max(1, direct.operations):.0%}")
    idle_kb = (proxied.rss_idle_kb - proxied.rss_before_kb) / max(1, proxied.idle_connected)
    active_kb = (proxied.rss_loaded_kb - proxied.rss_idle_kb) / max(1, proxied.active_connected)
    total_kb = (proxied.rss_loaded_kb - proxied.rss_before_kb) / max(1, connections)
    print(f"proxy RSS {proxied.rss_before_kb / 1024:.1f} -> {proxied.rss_loaded_kb / 1024:.1f} MB: "
          f"{total_kb:.1f} KiB per connection ({idle_kb:.1f} KiB idle pre-auth, {active_kb:.1f} KiB relayed)")


if __name__ == "__main__":
    main()
