"""The post-login relay: every byte arrives, in order, both ways, over plain sockets and other streams."""

from __future__ import annotations

import hashlib
import os

import trio
import trio.testing

from mailmigrator.adapters.proxy.backends import BackendSession
from mailmigrator.adapters.proxy.relay import relay

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two connected loopback TCP streams."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return client, server


async def receive_all(stream: trio.abc.Stream) -> bytes:
    chunks = []
    while data := await stream.receive_some(65536):
        chunks.append(data)
    return b"".join(chunks)


async def exchange(make_pair) -> tuple[bytes, bytes]:
    """Relay PAYLOAD from the backend to the user and a command line back; return what each end got."""
    user, user_side = await make_pair()
    backend_side, backend = await make_pair()
    session = BackendSession(stream=backend_side, pending=b"* OK [CAPABILITY IMAP4rev1] Logged in\r\n")
    got: dict[str, bytes] = {}

    async def backend_peer() -> None:
        got["backend"] = await backend.receive_some(65536)
        await backend.send_all(PAYLOAD)
        await backend.aclose()

    async def proxy() -> None:
        try:
            await relay(user_side, session, b"", send_timeout=60)
        finally:
            await user_side.aclose()  # as the proxy's connection handler does

    async def user_peer() -> None:
        await user.send_all(b"a FETCH 1:* BODY.PEEK[]\r\n")
        got["user"] = await receive_all(user)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(proxy)
            nursery.start_soon(backend_peer)
            nursery.start_soon(user_peer)
    return got["user"], got["backend"]


async def test_tcp_relay_delivers_every_byte_in_order_and_ends_when_backend_closes():
    to_user, to_backend = await exchange(tcp_pair)
    prefix = b"* OK [CAPABILITY IMAP4rev1] Logged in\r\n"
    assert to_backend == b"a FETCH 1:* BODY.PEEK[]\r\n"
    assert to_user[: len(prefix)] == prefix
    assert hashlib.sha256(to_user[len(prefix):]).digest() == hashlib.sha256(PAYLOAD).digest()


async def test_stream_relay_for_tls_like_streams_delivers_the_same_bytes():
    async def memory_pair():
        return trio.testing.memory_stream_pair()

    to_user, to_backend = await exchange(memory_pair)
    assert to_backend == b"a FETCH 1:* BODY.PEEK[]\r\n"
    assert to_user.endswith(PAYLOAD) and len(to_user) == len(PAYLOAD) + 39


async def test_tcp_relays_sharing_one_buffer_keep_a_slow_readers_bytes_intact():
    """A client that reads slowly leaves bytes the proxy could not send yet; a busy relay beside it must not touch them."""
    slow_payload, fast_payload = PAYLOAD, os.urandom(2 * 1024 * 1024 + 5)
    received: dict[str, bytes] = {}

    async def one_relay(name: str, payload: bytes, read_pause: float) -> None:
        user, user_side = await tcp_pair()
        backend_side, backend = await tcp_pair()

        async def backend_peer() -> None:
            await backend.send_all(payload)
            await backend.aclose()

        async def proxy() -> None:
            try:
                await relay(user_side, BackendSession(stream=backend_side), b"", send_timeout=60)
            finally:
                await user_side.aclose()

        async def user_peer() -> None:
            chunks = []
            while data := await user.receive_some(65536):
                chunks.append(data)
                await trio.sleep(read_pause)
            received[name] = b"".join(chunks)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(proxy)
            nursery.start_soon(backend_peer)
            nursery.start_soon(user_peer)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one_relay, "slow", slow_payload, 0.002)
            nursery.start_soon(one_relay, "fast", fast_payload, 0)
    assert hashlib.sha256(received["slow"]).digest() == hashlib.sha256(slow_payload).digest()
    assert hashlib.sha256(received["fast"]).digest() == hashlib.sha256(fast_payload).digest()
