"""Benchmark: the proxy holding 10,000 connections, 1,000 of them logged in and relaying to Dovecot.

Run as root: .venv/bin/python bench/proxy_scale.py [--connections 10000] [--relaying 1000]

The proxy is `mailmigrator serve` in its own process, on its default limits, in
front of the test bed's Dovecot pair (with its process limits raised so that it
takes 1,000 logins). A separate load process (this script with `--load`) opens
the connections from several source addresses 127.0.0.x: pre-auth ones read the
greeting, ask CAPABILITY and then wait; relaying ones log in through the proxy,
send NOOP once, and then wait. The proxy's RSS (VmRSS: Python heap, trio
tasks, per-connection objects; kernel socket buffers are kernel memory and are
not in it) is read before the load and after each kind of connection is open:
the growth divided by the connections is the memory per idle connection.
Then the relaying connections send NOOP every `--noop-interval` seconds while
200 sequential logins are timed from this process, against 200 timed before
any load in the same run.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

import trio  # noqa: E402

from proxy_fixtures import OLD_PASSWORD, start_pair  # noqa: E402
from testbed import DovecotServer  # noqa: E402
from proxy_load import serve_passwords_only  # noqa: E402  (the script beside this one)

USERS = 50
LOGINS = 200
# The load process and the proxy each hold one descriptor per connection, the proxy two per relayed one.
OPEN_FILES = 65536
IDLE_KIB_TARGET = 16
P99_TARGET_MS = 50


_test_bed_config = DovecotServer._render_config


def _roomy_config(self: DovecotServer) -> str:
    """The test bed's Dovecot with room for a thousand logged-in connections (one imap process each)."""
    text = _test_bed_config(self)
    for old, new in (("mail_max_userip_connections = 100", "mail_max_userip_connections = 1000"),
                     ("default_process_limit = 200", "default_process_limit = 1500"),
                     ("default_client_limit = 1000", "default_client_limit = 5000")):
        assert old in text, old
        text = text.replace(old, new)
    return text


DovecotServer._render_config = _roomy_config  # type: ignore[method-assign]  # this benchmark's Dovecots only


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


def raise_open_files(wanted: int) -> int:
    """Raise this process's descriptor limit (children inherit it); the soft limit reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def timed_logins(port: int, users: list[str]) -> list[float]:
    times = []
    for n in range(LOGINS):
        started = time.perf_counter()
        client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
        client.login(users[n % len(users)], OLD_PASSWORD)
        times.append(time.perf_counter() - started)
        client.logout()
    return times


def quantile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


# -- the load process ---------------------------------------------------------


async def _read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise EOFError("the proxy closed the connection")
        data += chunk
    return data


async def _connect(port: int, source: str) -> trio.SocketStream:
    sock = trio.socket.socket()
    try:
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    stream = trio.SocketStream(sock)
    await _read_until(stream, b"\r\n")
    return stream


async def _pre_auth(port: int, source: str) -> trio.SocketStream:
    stream = await _connect(port, source)
    await stream.send_all(b"a CAPABILITY\r\n")
    await _read_until(stream, b"a OK")
    return stream


async def _relaying(port: int, source: str, user: str) -> trio.SocketStream:
    stream = await _connect(port, source)
    await stream.send_all(f'a LOGIN "{user}" "{OLD_PASSWORD}"\r\n'.encode())
    reply = await _read_until(stream, b"a ")
    if b"a OK" not in reply:
        await _read_until(stream, b"\r\n")
        raise RuntimeError(f"login refused: {reply[-120:]!r}")
    await stream.send_all(b"b NOOP\r\n")
    await _read_until(stream, b"b OK")
    return stream


async def _open_many(count: int, opener, limiter: trio.CapacityLimiter, errors: list[str]) -> list[trio.SocketStream]:
    streams: list[trio.SocketStream] = []

    async def one(n: int) -> None:
        async with limiter:
            try:
                streams.append(await opener(n))
            except (OSError, EOFError, RuntimeError, trio.BrokenResourceError) as e:
                errors.append(f"{type(e).__name__}: {e}")

    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(one, n)
    return streams


async def _noop_loop(stream: trio.SocketStream, interval: float, counts: dict[str, int]) -> None:
    await trio.sleep(interval * (hash(stream) % 1000) / 1000)
    n = 0
    while True:
        n += 1
        tag = f"n{n}".encode()
        try:
            await stream.send_all(tag + b" NOOP\r\n")
            await _read_until(stream, tag + b" OK")
            counts["noops"] += 1
        except (OSError, EOFError, trio.BrokenResourceError):
            counts["errors"] += 1
            return
        await trio.sleep(interval)


async def load(port: int, pre_auth: int, relaying: int, sources: list[str], users: list[str], interval: float) -> None:
    """Open the connections when told on stdin, say when each kind is open, hold them until stdin closes."""
    stdin = trio.lowlevel.FdStream(os.dup(0))
    errors: list[str] = []
    limiter = trio.CapacityLimiter(100)

    def say(text: str) -> None:
        print(text, flush=True)

    await _read_until(stdin, b"\n")
    idle = await _open_many(pre_auth, lambda n: _pre_auth(port, sources[n % len(sources)]), limiter, errors)
    say(f"pre-auth {len(idle)} errors {len(errors)} {errors[:1]}")
    await _read_until(stdin, b"\n")
    relays = await _open_many(
        relaying, lambda n: _relaying(port, sources[n % len(sources)], users[n % len(users)]), limiter, errors)
    say(f"relaying {len(relays)} errors {len(errors)} {errors[-1:]}")
    await _read_until(stdin, b"\n")
    counts = {"noops": 0, "errors": 0}
    async with trio.open_nursery() as nursery:
        for stream in relays:
            nursery.start_soon(_noop_loop, stream, interval, counts)
        say("active")
        await _read_until(stdin, b"\n")
        say(f"noops {counts['noops']} errors {counts['errors']}")
        nursery.cancel_scope.cancel()


# -- the run ------------------------------------------------------------------


class LoadProcess:
    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--load", *args], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def step(self) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline().strip()
        if not line:
            raise SystemExit("the load process ended early")
        return line

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=10_000, help="all connections, relaying ones included")
    parser.add_argument("--relaying", type=int, default=1_000)
    parser.add_argument("--sources", type=int, default=12, help="client addresses 127.0.0.2 ... (per-address cap)")
    parser.add_argument("--noop-interval", type=float, default=10.0, help="seconds between a relay's NOOPs")
    parser.add_argument("--load", nargs=2, metavar=("PORT", "USERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sources = [f"127.0.0.{2 + n}" for n in range(args.sources)]
    pre_auth = args.connections - args.relaying
    if args.load:
        users = [f"scale{n}@example.com" for n in range(int(args.load[1]))]
        trio.run(load, int(args.load[0]), pre_auth, args.relaying, sources, users, args.noop_interval)
        return
    limit = raise_open_files(OPEN_FILES)
    with tempfile.TemporaryDirectory(prefix="mmbench-") as tmp:
        work = Path(tmp)
        for pair in start_pair(work / "pair"):
            users = [f"scale{n}@example.com" for n in range(USERS)]
            server, proxy_port = serve_passwords_only(work, pair, users, open(work / "serve.log", "w"))
            load_process = None
            try:
                timed_logins(proxy_port, users[:10])  # warm up
                unloaded = timed_logins(proxy_port, users)
                rss_start = rss_kib(server.pid)
                load_process = LoadProcess([str(proxy_port), str(USERS), "--connections", str(args.connections),
                                            "--relaying", str(args.relaying), "--sources", str(args.sources),
                                            "--noop-interval", str(args.noop_interval)])
                started = time.monotonic()
                pre_auth_line = load_process.step()
                opened_in = time.monotonic() - started
                time.sleep(1.0)
                rss_pre_auth = rss_kib(server.pid)
                relaying_line = load_process.step()
                time.sleep(1.5)  # buffers of the login bursts given back
                rss_relaying = rss_kib(server.pid)
                load_process.step()
                loaded = timed_logins(proxy_port, users)
                rss_end = rss_kib(server.pid)
                noop_line = load_process.step()
            finally:
                if load_process is not None:
                    load_process.close()
                server.terminate()
                server.wait(30)
            serve_log = (work / "serve.log").read_text().splitlines()
            failures = [line for line in serve_log
                        if "connection failed" in line or "refused" in line or "EMFILE" in line]
            open_files_lines = [line.split("] ", 1)[-1].strip() for line in serve_log if "open files" in line]
    opened_pre_auth, opened_relaying = int(pre_auth_line.split()[1]), int(relaying_line.split()[1])
    per_pre_auth = (rss_pre_auth - rss_start) / max(1, opened_pre_auth)
    per_relaying = (rss_relaying - rss_pre_auth) / max(1, opened_relaying)
    per_connection = (rss_relaying - rss_start) / max(1, opened_pre_auth + opened_relaying)
    u50, u99, l50, l99 = (quantile_ms(unloaded, 0.5), quantile_ms(unloaded, 0.99),
                          quantile_ms(loaded, 0.5), quantile_ms(loaded, 0.99))
    print(f"load: {args.connections:,} connections from {args.sources} addresses ({pre_auth:,} pre-auth idle, "
          f"{args.relaying:,} logged in and relaying to Dovecot, NOOP every {args.noop_interval:g} s); "
          f"open files limit {limit:,}")
    print(f"load process: {pre_auth_line} (in {opened_in:.1f} s); {relaying_line}; {noop_line}")
    print(f"proxy RSS {rss_start / 1024:.1f} MiB -> {rss_pre_auth / 1024:.1f} MiB with pre-auth -> "
          f"{rss_relaying / 1024:.1f} MiB with relaying -> {rss_end / 1024:.1f} MiB after the timed logins")
    print(f"memory per idle connection: pre-auth {per_pre_auth:.1f} KiB, relaying {per_relaying:.1f} KiB "
          f"(two sockets), all {per_connection:.1f} KiB (target <= {IDLE_KIB_TARGET} KiB)")
    print(f"login unloaded p50 {u50:.2f} ms p99 {u99:.2f} ms | under load p50 {l50:.2f} ms p99 {l99:.2f} ms "
          f"| p99 difference {l99 - u99:+.2f} ms (target <= {P99_TARGET_MS}), p50 ratio {l50 / u50:.2f}x, "
          f"mean {statistics.mean(loaded) * 1000:.2f} vs {statistics.mean(unloaded) * 1000:.2f} ms")
    for line in open_files_lines:
        print(f"serve: {line}")
    print(f"proxy log: {len(failures)} refused/failed connection lines" + (f", first: {failures[0][:200]}" if failures else ""))


if __name__ == "__main__":
    main()
