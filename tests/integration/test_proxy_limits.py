"""The proxy under abuse, against the real Dovecot pair: resets, junk, floods, slow and deaf clients, pipelining."""

from __future__ import annotations

import imaplib
import random
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
import structlog
import structlog.testing
import trio

from mailmigrator.ops.config import load_config
from mailmigrator.ops.composition import proxy_limits
from mailmigrator.ops.serve import build_service
from mailmigrator.ops.composition import open_store
from proxy_fixtures import OLD_PASSWORD, Pair, pair, seed_user, with_free_ports, write_config

pytestmark = pytest.mark.dovecot
__all__ = ["pair"]

HOST = "127.0.0.1"


async def serve_proxy(tmp: Path, pair: Pair, nursery: trio.Nursery, extra_proxy: str = "") -> dict[str, int]:
    """`serve`'s proxy and workers on free ports, limits from `[proxy]`; a stopped run passes logins to the old server."""
    config = with_free_ports(load_config(write_config(tmp, pair, extra_proxy=extra_proxy, tls=False)))
    wired = open_store(config, create=True)
    assert wired is not None
    limits = replace(proxy_limits(config), failure_delay=0.0, refusal_report_interval=0.5)
    service = build_service(config, wired.app, limits)
    bound = await nursery.start(service.run)
    return {listener.protocol: port for listener, port in bound}


class SourceBoundIMAP(imaplib.IMAP4):
    """imaplib from a chosen loopback source address, so one test can be several clients."""

    def __init__(self, source: str, host: str, port: int) -> None:
        self.source = source
        super().__init__(host, port, timeout=20)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))


def login_works(port: int, user: str, source: str = HOST) -> bool:
    client = SourceBoundIMAP(source, HOST, port)
    typ, _ = client.login(user, OLD_PASSWORD)
    status, _ = client.select("INBOX", readonly=True)
    client.logout()
    return typ == "OK" and status == "OK"


async def in_batches(count: int, batch: int, one: Callable[[int], Awaitable[None]]) -> None:
    for start in range(0, count, batch):
        async with trio.open_nursery() as nursery:
            for i in range(start, min(count, start + batch)):
                nursery.start_soon(one, i)


async def reset_connection(port: int) -> None:
    sock = trio.socket.socket()
    try:
        await sock.connect((HOST, port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()  # SO_LINGER 0: the close sends RST, before the proxy has even looked at the socket


def junk_session(rng: random.Random, protocol: str) -> list[bytes]:
    """What one hostile or broken client sends: random bytes, a truncated command, half a literal."""
    kind = rng.randrange(4)
    if kind == 0:
        return [rng.randbytes(rng.randrange(1, 3000))]
    if protocol == "pop3":
        valid = rng.choice([b"USER someone\r\n", b"PASS x y\r\n", b"AUTH PLAIN\r\n", b"CAPA\r\n", b"STLS\r\n"])
    else:
        valid = rng.choice([b"a1 LOGIN someone secret\r\n", b"a2 AUTHENTICATE PLAIN\r\n", b'a3 ID ("x" "y")\r\n',
                            b"a4 CAPABILITY\r\n", b"a5 STARTTLS\r\n", b"a6 LOGIN {5+}\r\nabc"])
    if kind == 1:
        return [valid[: rng.randrange(len(valid))]]
    if kind == 2:
        size = rng.randrange(1, 100_000)
        return [b"a7 LOGIN {%d%s}\r\n" % (size, rng.choice([b"", b"+"])), rng.randbytes(rng.randrange(size))]
    return [valid[: rng.randrange(len(valid))] for _ in range(rng.randrange(1, 5))]


async def random_session(port: int, protocol: str, seed: int) -> None:
    rng = random.Random(seed)
    parts = junk_session(rng, protocol)
    sock = trio.socket.socket()
    try:
        await sock.connect((HOST, port))
        if rng.random() < 0.5:
            await sock.recv(4096)
        for part in parts:
            await sock.send(part)
        if rng.random() < 0.5:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # the proxy may hang up on us first; that is its right
    finally:
        sock.close()


async def test_reset_and_junk_connections_leave_serve_up_and_logins_working(pair: Pair, tmp_path: Path) -> None:
    seed_user(pair, "rst@example.com", messages=1)
    async with trio.open_nursery() as nursery:
        ports = await serve_proxy(tmp_path, pair, nursery)
        with trio.fail_after(50):
            await in_batches(1000, 100, lambda i: reset_connection(ports["imap" if i % 2 else "pop3"]))
            assert await trio.to_thread.run_sync(login_works, ports["imap"], "rst")
            await in_batches(1000, 100, lambda i: random_session(ports["pop3" if i % 3 == 0 else "imap"],
                                                                  "pop3" if i % 3 == 0 else "imap", i))
            assert await trio.to_thread.run_sync(login_works, ports["imap"], "rst")
        nursery.cancel_scope.cancel()


async def greeting(source: str, port: int) -> tuple[trio.socket.SocketType, bytes]:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect((HOST, port))
    with trio.fail_after(10):
        return sock, await sock.recv(4096)


async def test_connections_beyond_the_per_address_cap_are_refused_other_addresses_log_in(
    pair: Pair, tmp_path: Path
) -> None:
    seed_user(pair, "capped@example.com", messages=1)
    async with trio.open_nursery() as nursery:
        ports = await serve_proxy(tmp_path, pair, nursery, extra_proxy="max_connections_per_address = 5\n")
        held = [await greeting(HOST, ports["imap"]) for _ in range(3)]
        held += [await greeting(HOST, ports["pop3"]) for _ in range(2)]
        assert all(line.startswith((b"* OK", b"+OK")) for _, line in held)
        refused = []
        with structlog.testing.capture_logs() as logged:
            for protocol in ("imap", "pop3") * 20:
                sock, line = await greeting(HOST, ports[protocol])
                with trio.fail_after(10):
                    rest = await sock.recv(4096)
                refused.append((line, rest))
                sock.close()
            await trio.sleep(1.2)
        # One summary line for the whole flood, not a line per refused connection.
        reports = [e for e in logged if e["event"] == "connections refused"]
        assert sum(r["count"] for r in reports) == 40 and len(reports) <= 2  # the flood may straddle one report
        assert {address for r in reports for address in r["busiest"]} == {HOST}
        assert len(logged) == len(reports)
        assert {line for line, _ in refused} == {
            b"* BYE [UNAVAILABLE] Too many connections from this address, try again later.\r\n",
            b"-ERR [SYS/TEMP] Too many connections from this address, try again later.\r\n",
        }
        assert {rest for _, rest in refused} == {b""}  # and closed
        assert await trio.to_thread.run_sync(login_works, ports["imap"], "capped", "127.0.0.2")
        for sock, _ in held[:1]:
            sock.close()
        with trio.fail_after(10):  # a slot given back is a slot to use again
            while True:
                sock, line = await greeting(HOST, ports["imap"])
                sock.close()
                if line.startswith(b"* OK"):
                    break
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def read_to_end(sock: trio.socket.SocketType) -> bytes:
    data = b""
    try:
        while chunk := await sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


async def test_a_slow_drip_client_is_cut_off_at_the_login_deadline(pair: Pair, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        ports = await serve_proxy(tmp_path, pair, nursery, extra_proxy="login_timeout = 1.5\n")
        for protocol, command in (("imap", b"a1 LOGIN someone secret\r\n"), ("pop3", b"USER someone\r\n")):
            sock, _ = await greeting(HOST, ports[protocol])
            started = trio.current_time()
            ended: list[bytes] = []

            async def drip() -> None:
                for byte in command * 100:  # one byte every 0.2 s: never idle, never done
                    await trio.sleep(0.2)
                    try:
                        await sock.send(bytes([byte]))
                    except OSError:
                        return

            async with trio.open_nursery() as inner:
                inner.start_soon(drip)
                with trio.fail_after(10):
                    ended.append(await read_to_end(sock))
                inner.cancel_scope.cancel()
            sock.close()
            assert ended[0].endswith(b"Too long without logging in, disconnecting.\r\n")
            assert 1.4 < trio.current_time() - started < 4
        nursery.cancel_scope.cancel()


async def test_a_client_that_never_reads_does_not_pin_its_connection(pair: Pair, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        ports = await serve_proxy(tmp_path, pair, nursery, extra_proxy="send_timeout = 1.0\n")
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect((HOST, ports["imap"]))
        chunk = b"a CAPABILITY\r\n" * 5000
        sent = 0
        while sent < 256 * 1024 * 1024:  # until the proxy, blocked on its replies, stops reading ours
            with trio.move_on_after(1) as blocked:
                sent += await sock.send(chunk)
            if blocked.cancelled_caught:
                break
        assert blocked.cancelled_caught, "the proxy kept reading: the test did not fill its send buffer"
        await trio.sleep(2)  # longer than send_timeout
        with trio.fail_after(10):
            replies = await read_to_end(sock)  # ends: the proxy has hung up, not waiting for us to read
        sock.close()
        assert replies.count(b"a OK Capability completed.") < sent // len(b"a CAPABILITY\r\n")
        nursery.cancel_scope.cancel()


async def test_commands_pipelined_after_login_reach_the_backend_in_order(pair: Pair, tmp_path: Path) -> None:
    seed_user(pair, "pipe@example.com", messages=2)
    message = b"Subject: pipelined\r\nFrom: a@example.com\r\n\r\nbody \xc3\xbc {3}\r\nline two\r\n"
    half = len(message) // 2
    async with trio.open_nursery() as nursery:
        ports = await serve_proxy(tmp_path, pair, nursery)
        sock, _ = await greeting(HOST, ports["imap"])
        await sock.send(
            b'a1 LOGIN pipe "' + OLD_PASSWORD.encode() + b'"\r\n'
            b"a2 NOOP\r\na3 SELECT INBOX\r\na4 STATUS INBOX (MESSAGES)\r\n"
            b"a5 APPEND INBOX (\\Seen) {%d+}\r\n" % len(message) + message[:half])
        await trio.sleep(0.3)
        await sock.send(message[half:] + b"\r\na6 NOOP\r\na7 LOGOUT\r\n")
        with trio.fail_after(20):
            replies = await read_to_end(sock)
        sock.close()
        tagged = [line.split(b" ", 2)[:2] for line in replies.split(b"\r\n") if line[:1] == b"a"]
        assert tagged == [[b"a%d" % i, b"OK"] for i in range(1, 8)], replies
        nursery.cancel_scope.cancel()

    def appended() -> list[bytes]:
        with pair.old.imap("pipe@example.com") as client:
            client.select_folder("INBOX", readonly=True)
            found = client.search(["SUBJECT", "pipelined"])
            return [v[b"BODY[]"] for v in client.fetch(found, ["BODY.PEEK[]"]).values()]

    assert await trio.to_thread.run_sync(appended) == [message]




async def test_pop3_commands_pipelined_after_pass_reach_the_backend_in_order(pair: Pair, tmp_path: Path) -> None:
    seed_user(pair, "pipepop@example.com", messages=3)
    async with trio.open_nursery() as nursery:
        ports = await serve_proxy(tmp_path, pair, nursery)
        sock, _ = await greeting(HOST, ports["pop3"])
        await sock.send(b"USER pipepop\r\nPASS " + OLD_PASSWORD.encode() + b"\r\nSTAT\r\nNOOP\r\nLIST 2\r\nQU")
        await trio.sleep(0.3)
        await sock.send(b"IT\r\n")
        with trio.fail_after(20):
            replies = await read_to_end(sock)
        sock.close()
        lines = replies.split(b"\r\n")
        assert [line.split(b" ")[0] for line in lines[:6]] == [b"+OK"] * 6, replies
        assert lines[2].startswith(b"+OK 3 ") and lines[4].startswith(b"+OK 2 "), replies
        nursery.cancel_scope.cancel()

async def test_reset_connections_leave_the_admin_console_up(pair: Pair, tmp_path: Path) -> None:
    import httpx

    from mailmigrator.ops.console import run_console
    from mailmigrator.ops.console.auth import write_password_file

    password_file = tmp_path / "admin.secret"
    write_password_file(password_file, "console-password-1")
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    path = write_config(tmp_path, pair, tls=False)
    path.write_text(path.read_text() + f'\n[admin]\nlisten = ["{HOST}:{port}"]\npassword_file = "{password_file}"\n')
    config = load_config(path)
    wired = open_store(config, create=True)
    assert wired is not None
    try:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(run_console, config, wired)
            with trio.fail_after(40):
                await in_batches(1000, 100, lambda i: reset_connection(port))
                async with httpx.AsyncClient(base_url=urls[0]) as client:
                    response = await client.post("/api/login", json={"password": "console-password-1"})
            assert response.status_code == 200
            nursery.cancel_scope.cancel()
    finally:
        wired.close()


async def test_a_client_that_stops_reading_after_login_does_not_pin_the_relay(pair: Pair, tmp_path: Path) -> None:
    from testbed import seed_bulk

    pair.old.add_user("deaf@example.com", OLD_PASSWORD)
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 4000
    seed_bulk(pair.old, "deaf@example.com", "INBOX", [big])
    async with trio.open_nursery() as nursery:
        ports = await serve_proxy(tmp_path, pair, nursery, extra_proxy="relay_send_timeout = 1.0\n")
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect((HOST, ports["imap"]))
        await sock.send(b'a1 LOGIN deaf "' + OLD_PASSWORD.encode() + b'"\r\n')
        received = b""
        with trio.fail_after(20):
            while b"a1 OK" not in received:
                received += await sock.recv(4096)
        await sock.send(b"a2 SELECT INBOX\r\n" + b"a3 FETCH 1 BODY.PEEK[]\r\n" * 20)  # 80 MB it will not read
        await trio.sleep(3)  # longer than relay_send_timeout
        with trio.fail_after(10):
            await read_to_end(sock)  # ends: the relay has hung up instead of waiting for us
        sock.close()
        nursery.cancel_scope.cancel()
