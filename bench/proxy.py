"""Benchmark: login latency and relayed FETCH throughput, through the proxy vs straight to Dovecot.

Run as root: /tmp/venv/bin/python bench/proxy.py  (starts its own Dovecot pair on loopback).
Targets: login p50 overhead < 5 ms; relayed throughput >= 80% of direct.
"""

from __future__ import annotations

import imaplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from proxy_fixtures import OLD_PASSWORD, start_pair, write_config  # noqa: E402

from mailmigrator.ops.config import load_config  # noqa: E402
from mailmigrator.ops.testbed import make_message, seed_bulk  # noqa: E402

LOGINS = 200
MESSAGES, SIZE = 300, 200 * 1024
USER = "bench@example.com"


def login_times(port: int, user: str, password: str) -> list[float]:
    times = []
    for _ in range(LOGINS):
        started = time.perf_counter()
        client = imaplib.IMAP4("127.0.0.1", port)
        client.login(user, password)
        times.append(time.perf_counter() - started)
        client.logout()
    return times


def fetch_rate(port: int, user: str, password: str) -> float:
    client = imaplib.IMAP4("127.0.0.1", port)
    client.login(user, password)
    client.select("INBOX", readonly=True)
    started = time.perf_counter()
    _, data = client.fetch(f"1:{MESSAGES}", "(BODY.PEEK[])")
    elapsed = time.perf_counter() - started
    total = sum(len(p[1]) for p in data if isinstance(p, tuple))
    client.logout()
    return total / elapsed / 1e6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"proxy did not listen on {port}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mmbench-") as tmp:
        work = Path(tmp)
        for pair in start_pair(work / "pair"):
            pair.old.add_user(USER, OLD_PASSWORD)
            config_path = write_config(work, pair, passwords_only=True, tls=False)
            proxy_port, pop_port = _free_port(), _free_port()
            text = config_path.read_text().replace('imap = ["127.0.0.1:1"]', f'imap = ["127.0.0.1:{proxy_port}"]')
            config_path.write_text(text.replace('pop3 = ["127.0.0.1:1"]', f'pop3 = ["127.0.0.1:{pop_port}"]'))
            load_config(config_path)
            # The proxy runs as its own process, as in production (no GIL shared with the client).
            server = subprocess.Popen([str(Path(sys.executable).parent / "mailmigrator"), "--config", str(config_path), "serve"],
                                      stderr=subprocess.DEVNULL)
            try:
                subprocess.run([str(Path(sys.executable).parent / "mailmigrator"), "--config", str(config_path), "start"],
                               check=True, capture_output=True)
                _wait_port(proxy_port)
                time.sleep(1.5)  # serve polls the run state once a second
                imaplib.IMAP4("127.0.0.1", proxy_port).login(USER, OLD_PASSWORD)  # migrates the password
                time.sleep(1.2)
                seed_bulk(pair.new, USER, "INBOX", [make_message(f"b{i}", size=SIZE) for i in range(MESSAGES)])
                direct_port = pair.new.imap_port
                assert direct_port is not None
                login_times(direct_port, USER, OLD_PASSWORD)[:10]  # warm up
                direct = login_times(direct_port, USER, OLD_PASSWORD)
                proxied = login_times(proxy_port, USER, OLD_PASSWORD)
                direct_rate = max(fetch_rate(direct_port, USER, OLD_PASSWORD) for _ in range(3))
                proxied_rate = max(fetch_rate(proxy_port, USER, OLD_PASSWORD) for _ in range(3))
            finally:
                server.terminate()
                server.wait(30)
            d50, p50 = statistics.median(direct) * 1000, statistics.median(proxied) * 1000
            d95 = statistics.quantiles(direct, n=20)[18] * 1000
            p95 = statistics.quantiles(proxied, n=20)[18] * 1000
            print(f"login  direct p50 {d50:.2f} ms p95 {d95:.2f} ms | proxy p50 {p50:.2f} ms p95 {p95:.2f} ms "
                  f"| overhead p50 {p50 - d50:.2f} ms (target < 5)")
            print(f"fetch  direct {direct_rate:.1f} MB/s | proxy {proxied_rate:.1f} MB/s "
                  f"| ratio {proxied_rate / direct_rate:.0%} (target >= 80%) [{MESSAGES} x {SIZE // 1024} KiB]")


if __name__ == "__main__":
    main()
