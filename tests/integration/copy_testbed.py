"""Shared pieces of the copy-engine integration tests: config files, CLI runs, a fault-injecting TCP relay."""

from __future__ import annotations

import contextlib
import io
import itertools
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import testbed
from mailmigrator.ops.cli import main

_users = itertools.count(1)


def new_user(old: testbed.DovecotServer, new: testbed.DovecotServer | None, *, on_target: bool = True) -> tuple[str, str]:
    """A fresh login present on the old server (and on the new one), with its old password."""
    login = f"user{next(_users)}-{secrets.token_hex(3)}@example.com"
    password = secrets.token_urlsafe(10)
    old.add_user(login, password)
    _wait_for_login(lambda: old.imap(login, password))
    if new is not None and on_target:
        new.add_user(login, secrets.token_urlsafe(10))
        _wait_for_login(lambda: new.imap(login))
    return login, password


def _wait_for_login(connect: Callable[[], Any], timeout: float = 5.0) -> None:
    # Dovecot notices a rewritten passwd-file on a later lookup, not always the next one.
    deadline = time.monotonic() + timeout
    while True:
        try:
            connect().logout()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def secret_file(directory: Path, name: str, secret: str) -> Path:
    path = directory / name
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def write_config(
    directory: Path,
    old: testbed.DovecotServer,
    new: testbed.DovecotServer,
    *,
    source: str = "",
    migration: str = "",
    source_port: int | None = None,
    tls: str = "detect",
    protocol: str = "imap",
    while_copying: str = "notice",
) -> Path:
    """A config file in `directory` pointing at the test servers; `source`/`migration` add keys."""
    master = secret_file(directory, "master.secret", new.master_password or "")
    port = source_port or (old.pop3_port if protocol == "pop3" else old.imap_port)
    if tls == "direct" and source_port is None:
        port = old.pop3s_port if protocol == "pop3" else old.imaps_port
    path = directory / "mm.toml"
    path.write_text(
        f'[store]\nurl = "sqlite:///{directory / "events.sqlite"}"\n'
        f'[source]\nhost = "127.0.0.1:{port}"\nprotocol = "{protocol}"\ntls = "{tls}"\n'
        f'ca_file = "{old.ca_pem}"\n{source}\n'
        f'[target]\nhost = "127.0.0.1"\nport = {new.imap_port}\ntls = "detect"\nca_file = "{new.ca_pem}"\n'
        f'master_user = "{new.master_user}"\nmaster_password_file = "{master}"\n'
        f'[migration]\nprimary_domain = "example.com"\nwhile_copying = "{while_copying}"\n{migration}\n'
    )
    return path


def run_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, stdin: str, *args: str
) -> tuple[int, str, str]:
    """Run `mailmigrator ARGS` in this process with `stdin`; exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def message_count(server: testbed.DovecotServer, login: str) -> int:
    """Messages in every selectable folder of `login`, through the master user."""
    with server.imap(login) as client:
        total = 0
        for flags, _, name in client.list_folders():
            if b"\\Noselect" in flags or b"\\NonExistent" in flags:
                continue
            total += client.folder_status(name, [b"MESSAGES"])[b"MESSAGES"]
        return total


class FaultyRelay:
    """A loopback TCP relay to `upstream` that can cut connections and slow them down.

    `cut_after` bytes from the server: the first `cuts` connections to reach
    that many are closed right there (a dropped connection mid-transfer).
    `bytes_per_second` throttles the server-to-client direction, with no burst after an idle spell.
    """

    def __init__(self, upstream: tuple[str, int], *, cut_after: int = 0, cuts: int = 0,
                 bytes_per_second: float = 0.0, listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.cuts_done = 0
        self.bytes_per_second = bytes_per_second
        self.listener = socket.create_server(listen)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.stopped = False
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> FaultyRelay:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped = True
        # A close alone leaves the accept thread blocked on a socket still listening: a later relay given the
        # same port number then had its connections taken by this one, to this one's upstream. Shutting the
        # socket down wakes the thread.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        with contextlib.suppress(OSError):
            self.listener.close()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            cut = self.cut_after
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                # The upstream refused this one: the client sees a dropped connection, the relay keeps accepting.
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, server, 0, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, cut, self.bytes_per_second),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, cut: int, rate: float) -> None:
        sent = 0
        # When the throttled bytes may have left: an idle connection earns no credit, so it never bursts.
        due = time.monotonic()
        try:
            while True:
                data = src.recv(16384)
                if not data:
                    break
                if cut and sent + len(data) >= cut:
                    with self.lock:
                        cutting = self.cuts_left > 0
                        self.cuts_left -= cutting
                        self.cuts_done += cutting
                    if cutting:
                        break
                    cut = 0
                dst.sendall(data)
                sent += len(data)
                if rate:
                    due = max(due, time.monotonic()) + len(data) / rate
                    time.sleep(max(0.0, due - time.monotonic()))
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


@contextlib.contextmanager
def started(server: testbed.DovecotServer) -> Iterator[testbed.DovecotServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()
