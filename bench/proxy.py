"""Benchmark: login latency and relayed FETCH throughput, through the proxy vs straight to Dovecot.

Run as root: /tmp/venv/bin/python bench/proxy.py  (starts its own Dovecot pair on loopback).
Targets: login p50 overhead < 5 ms; relayed throughput >= 80% of direct.

Throughput is all bytes over all seconds of RUNS interleaved runs (direct,
proxied, direct, ...), with two clients. The socket client sends the FETCH and only counts bytes up to
the tagged reply, so the figure measures the servers: in production the client
is another machine. The imaplib client parses every literal in Python and, on a
2-core machine, needs about as much CPU as Dovecot; it is printed for reference
with each process's CPU time, which shows where that time goes. The STARTTLS
line (for reference) encrypts client to proxy and client to Dovecot; the proxy
then decrypts and relays to Dovecot in plain, as with a backend on a trusted LAN.

On 2 cores the per-run ratio is bimodal: the scheduler either puts the proxy and
Dovecot on one core (their CPU times add up) or on two. PLACEMENT=shared or
PLACEMENT=apart pins the new Dovecot's processes and the proxy to show each case.
A median of such runs jumps between the modes, so the headline is the total rate
and the middle half of the per-run ratios is printed beside it.
"""

from __future__ import annotations

import imaplib
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the test bed proxy_fixtures imports

from proxy_fixtures import OLD_PASSWORD, start_pair, write_config  # noqa: E402

from mailmigrator.ops.config import load_config  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the Dovecot test bed
from testbed import make_message, seed_bulk  # noqa: E402

LOGINS = 200
MESSAGES, SIZE = 1000, 200 * 1024
RUNS = max(2, int(os.environ.get("RUNS", "11")))
USER = "bench@example.com"
TAG = b"MM1"


def login_times(port: int, user: str, password: str) -> list[float]:
    times = []
    for _ in range(LOGINS):
        started = time.perf_counter()
        client = imaplib.IMAP4("127.0.0.1", port)
        client.login(user, password)
        times.append(time.perf_counter() - started)
        client.logout()
    return times


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def pin(placement: str, dovecot_pid: int, proxy_pid: int) -> None:
    """Put Dovecot and the proxy on one core or on two; the client takes the other core or the proxy's."""
    dovecot_core = {0} if placement == "shared" else {1}
    for pid in process_tree(dovecot_pid):
        os.sched_setaffinity(pid, dovecot_core)
    os.sched_setaffinity(proxy_pid, {0})
    os.sched_setaffinity(0, {1} if placement == "shared" else {0})


def fetch_imaplib(client: imaplib.IMAP4) -> int:
    _, data = client.fetch(f"1:{MESSAGES}", "(BODY.PEEK[])")
    return sum(len(part[1]) for part in data if isinstance(part, tuple))


def fetch_socket(client: imaplib.IMAP4) -> int:
    """Send the FETCH on the logged-in socket and count the reply's bytes up to the tagged OK."""
    client.sock.sendall(TAG + f" FETCH 1:{MESSAGES} (BODY.PEEK[])\r\n".encode())
    buffer = bytearray(1 << 20)
    total, tail = 0, b""
    while True:
        count = client.sock.recv_into(buffer)
        if not count:
            raise SystemExit("the server closed the connection during FETCH")
        total += count
        tail = (tail + bytes(buffer[max(0, count - 64):count]))[-64:]
        if b"\r\n" + TAG + b" " in tail and tail.endswith(b"\r\n"):
            if b"\r\n" + TAG + b" OK" not in tail:
                raise SystemExit(f"FETCH failed: {tail!r}")
            return total


def fetch_sample(
    port: int, fetch, proxy_pid: int, tls: ssl.SSLContext | None
) -> tuple[int, float, float, float]:
    """One FETCH of the whole INBOX, after STARTTLS when `tls` is given.

    Returns (bytes, seconds, client CPU seconds, proxy CPU seconds).
    """
    client = imaplib.IMAP4("127.0.0.1", port)
    if tls is not None:
        client.starttls(tls)
    client.login(USER, OLD_PASSWORD)
    client.select("INBOX", readonly=True)
    cpu, proxy_cpu = time.process_time(), cpu_seconds(proxy_pid)
    started = time.perf_counter()
    total = fetch(client)
    elapsed = time.perf_counter() - started
    cpu, proxy_cpu = time.process_time() - cpu, cpu_seconds(proxy_pid) - proxy_cpu
    client.logout()
    if total < MESSAGES * SIZE:
        raise SystemExit(f"FETCH returned {total} bytes, expected at least {MESSAGES * SIZE}")
    return total, elapsed, cpu, proxy_cpu


def _rate(samples: list[tuple[int, float, float, float]]) -> float:
    """MB/s over all samples together."""
    return sum(s[0] for s in samples) / sum(s[1] for s in samples) / 1e6


def _median_ms(samples: list[tuple[int, float, float, float]], field: int) -> float:
    return statistics.median(sample[field] for sample in samples) * 1000


def compare_fetch(
    name: str, fetch, direct_port: int, proxy_port: int, proxy_pid: int, tls: ssl.SSLContext | None = None
) -> None:
    direct, proxied = [], []
    for _ in range(RUNS):
        direct.append(fetch_sample(direct_port, fetch, proxy_pid, tls))
        proxied.append(fetch_sample(proxy_port, fetch, proxy_pid, tls))
    d_rate, p_rate = _rate(direct), _rate(proxied)
    low, _, high = statistics.quantiles([_rate([p]) / _rate([d]) for d, p in zip(direct, proxied)], n=4)
    print(f"fetch  {name:<14} direct {d_rate:7.1f} MB/s | proxy {p_rate:7.1f} MB/s "
          f"| ratio {p_rate / d_rate:.0%} (middle half of runs {low:.0%}-{high:.0%}) "
          f"| CPU ms per run: client {_median_ms(direct, 2):.0f} direct / {_median_ms(proxied, 2):.0f} proxied, "
          f"proxy process {_median_ms(proxied, 3):.0f}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int) -> None:
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
            config_path = write_config(work, pair, passwords_only=True)
            proxy_port = free_port()
            text = config_path.read_text().replace('imap = ["127.0.0.1:1"]', f'imap = ["127.0.0.1:{proxy_port}"]')
            for listener in ("pop3", "imaps", "pop3s"):
                text = text.replace(f'{listener} = ["127.0.0.1:1"]', f'{listener} = ["127.0.0.1:{free_port()}"]')
            config_path.write_text(text)
            load_config(config_path)
            # The proxy runs as its own process, as in production (no GIL shared with the client).
            server = subprocess.Popen([str(Path(sys.executable).parent / "mailmigrator"), "--config", str(config_path), "serve"],
                                      stderr=subprocess.DEVNULL)
            try:
                subprocess.run([str(Path(sys.executable).parent / "mailmigrator"), "--config", str(config_path), "start"],
                               check=True, capture_output=True)
                wait_port(proxy_port)
                time.sleep(1.5)  # serve polls the run state once a second
                imaplib.IMAP4("127.0.0.1", proxy_port).login(USER, OLD_PASSWORD)  # migrates the password
                time.sleep(1.2)
                seed_bulk(pair.new, USER, "INBOX", [make_message(f"b{i}", size=SIZE) for i in range(MESSAGES)])
                direct_port = pair.new.imap_port
                assert direct_port is not None
                login_times(direct_port, USER, OLD_PASSWORD)[:10]  # warm up
                direct = login_times(direct_port, USER, OLD_PASSWORD)
                proxied = login_times(proxy_port, USER, OLD_PASSWORD)
                placement = os.environ.get("PLACEMENT", "")
                if placement:
                    assert pair.new.pid is not None
                    pin(placement, pair.new.pid, server.pid)
                d50, p50 = statistics.median(direct) * 1000, statistics.median(proxied) * 1000
                d95 = statistics.quantiles(direct, n=20)[18] * 1000
                p95 = statistics.quantiles(proxied, n=20)[18] * 1000
                print(f"login  direct p50 {d50:.2f} ms p95 {d95:.2f} ms | proxy p50 {p50:.2f} ms p95 {p95:.2f} ms "
                      f"| overhead p50 {p50 - d50:.2f} ms (target < 5)")
                print(f"fetch  {MESSAGES} x {SIZE // 1024} KiB, {RUNS} interleaved runs, "
                      f"placement {placement or 'by the scheduler'}; target: socket client ratio >= 80%")
                compare_fetch("socket client", fetch_socket, direct_port, proxy_port, server.pid)
                compare_fetch("imaplib client", fetch_imaplib, direct_port, proxy_port, server.pid)
                tls = ssl.create_default_context(cafile=str(pair.workdir / "ca.pem"))
                compare_fetch("socket STARTTLS", fetch_socket, direct_port, proxy_port, server.pid, tls)
            finally:
                server.terminate()
                server.wait(30)


if __name__ == "__main__":
    main()
