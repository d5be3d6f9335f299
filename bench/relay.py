"""Benchmark: CPU the proxy's post-login relay spends per GB, plain-socket path vs the generic stream path.

Run: /tmp/venv/bin/python bench/relay.py
A producer and a consumer process push TOTAL bytes through `relay()` over loopback TCP.
The baseline wraps the same sockets in a StapledStream, which takes the generic
receive_some/send_all path that TLS connections use.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import socket
import statistics
import time

import trio

from mailmigrator.adapters.proxy.backends import BackendSession
from mailmigrator.adapters.proxy.relay import relay

TOTAL = int(os.environ.get("TOTAL_MB", "1024")) * 1024 * 1024
ROUNDS = int(os.environ.get("ROUNDS", "7"))


def produce(port: int) -> None:
    block = b"x" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(TOTAL // len(block)):
            sock.sendall(block)


def consume(port: int, results: multiprocessing.Queue) -> None:
    buffer = bytearray(1 << 20)
    received = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.perf_counter()
        while count := sock.recv_into(buffer):
            received += count
        results.put((received, time.perf_counter() - started))


async def relay_once(generic: bool) -> tuple[float, float]:
    """Relay TOTAL bytes once: (GB/s seen by the consumer, relay CPU seconds per GB)."""
    backend_listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    user_listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    results: multiprocessing.Queue = multiprocessing.Queue()
    consumer = multiprocessing.Process(target=consume, args=(user_listener.socket.getsockname()[1], results))
    producer = multiprocessing.Process(target=produce, args=(backend_listener.socket.getsockname()[1],))
    consumer.start()
    producer.start()
    backend, user = await backend_listener.accept(), await user_listener.accept()
    if generic:
        backend, user = trio.StapledStream(backend, backend), trio.StapledStream(user, user)
    before = resource.getrusage(resource.RUSAGE_SELF)
    await relay(user, BackendSession(stream=backend), b"", send_timeout=600)
    await user.aclose()
    after = resource.getrusage(resource.RUSAGE_SELF)
    received, elapsed = results.get()
    producer.join()
    consumer.join()
    await backend.aclose()
    await backend_listener.aclose()
    await user_listener.aclose()
    if received != TOTAL:
        raise SystemExit(f"relayed {received} bytes, expected {TOTAL}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return received / elapsed / 1e9, cpu / (TOTAL / 1e9)


async def main() -> None:
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(ROUNDS):
        for generic in (True, False):
            runs[generic].append(await relay_once(generic))
    figures = {}
    for generic, samples in runs.items():
        rate = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        figures[generic] = cpu
        name = "stream path (baseline)" if generic else "socket path"
        print(f"relay  {name:<22} {rate:5.2f} GB/s | relay CPU {cpu * 1000:4.0f} ms/GB")
    print(f"relay  socket path CPU / stream path CPU = {figures[False] / figures[True]:.2f} "
          f"(median of {ROUNDS} interleaved rounds of {TOTAL >> 20} MB)")


if __name__ == "__main__":
    trio.run(main)
