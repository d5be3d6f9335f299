"""A loopback TCP relay in front of a real server that behaves like an overloaded one.

At most `max_connections` relayed connections at a time; one beyond that is
answered per `overflow`:
- "reset": closed with a TCP RST (the client sees a reset or an early EOF);
- "bye": Dovecot's greeting-time refusal, `* BYE Maximum number of connections ...`;
- "unavailable": a greeting, then `NO [UNAVAILABLE]` to every command but CAPABILITY and
  LOGOUT (RFC 5530), as a server whose backend is overloaded answers LOGIN.
With `delay`, each relayed connection waits that long before reaching the server
(a slow link: logins through it stay in flight). `accepted` counts the
connections that reached the server, `peak` the most open at once.
Runs in threads so that subprocesses and synchronous tests can use it alike.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from typing import Literal

Overflow = Literal["reset", "bye", "unavailable"]

BYE = b"* BYE Maximum number of connections from user+IP exceeded (mail_max_userip_connections=%d)\r\n"
GREETING = b"* OK Dovecot ready.\r\n"


class FaultRelay:
    """Relays 127.0.0.1:`port` to `upstream`, refusing connections beyond `max_connections`."""

    def __init__(self, upstream: tuple[str, int], max_connections: int, overflow: Overflow = "reset",
                 delay: float = 0.0) -> None:
        if not upstream[0].startswith("127.") and upstream[0] != "::1":
            raise ValueError(f"the relay forwards to loopback only, not {upstream[0]}")
        self.upstream = upstream
        self.max_connections = max_connections
        self.overflow = overflow
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.refused = 0
        self.peak = 0
        self._open = 0
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, name="fault-relay", daemon=True)

    def __enter__(self) -> FaultRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self.listener.close()
        self._thread.join(timeout=5)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return self._open

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                admitted = self._open < self.max_connections
                if admitted:
                    self._open += 1
                    self.accepted += 1
                    self.peak = max(self.peak, self._open)
                else:
                    self.refused += 1
            if admitted:
                threading.Thread(target=self._relay, args=(client,), daemon=True).start()
            else:
                threading.Thread(target=self._refuse, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        if self.delay:
            time.sleep(self.delay)
        try:
            server = socket.create_connection(self.upstream, timeout=10)
            server.settimeout(None)
        except OSError:
            _close(client)
            self._release()
            return
        done = threading.Event()
        back = threading.Thread(target=_pump, args=(server, client, done), daemon=True)
        back.start()
        _pump(client, server, done)
        back.join()
        self._release()

    def _release(self) -> None:
        with self._lock:
            self._open -= 1

    def _refuse(self, client: socket.socket) -> None:
        try:
            if self.overflow == "reset":
                # SO_LINGER with zero timeout: close() sends RST instead of FIN.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif self.overflow == "bye":
                client.sendall(BYE % self.max_connections)
            else:
                self._answer_unavailable(client)
        except OSError:
            pass
        finally:
            client.close()

    @staticmethod
    def _answer_unavailable(client: socket.socket) -> None:
        client.settimeout(10)
        client.sendall(GREETING)
        pending = b""
        while True:
            data = client.recv(4096)
            if not data:
                return
            pending += data
            while b"\r\n" in pending:
                line, pending = pending.split(b"\r\n", 1)
                tag, _, rest = line.partition(b" ")
                if rest.upper().startswith(b"CAPABILITY"):
                    client.sendall(b"* CAPABILITY IMAP4rev1 LITERAL+\r\n" + tag + b" OK Capability completed.\r\n")
                    continue
                if rest.upper().startswith(b"LOGOUT"):
                    client.sendall(b"* BYE Logging out\r\n" + tag + b" OK Logout completed.\r\n")
                    return
                client.sendall(tag + b" NO [UNAVAILABLE] Server busy, try again later\r\n")


def _pump(src: socket.socket, dst: socket.socket, done: threading.Event) -> None:
    try:
        while not done.is_set():
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        done.set()
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        _close(src)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
