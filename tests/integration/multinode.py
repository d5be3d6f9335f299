"""Several `mailmigrator serve` processes on one PostgreSQL store, in front of the real Dovecot pair.

Each node is a subprocess with its own config file: the same [store] url, its own
loopback address (127.0.0.2, 127.0.0.3, ...) and port, and its own node_name.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mailmigrator.ops.cli import main as cli_main

SERVE = [sys.executable, "-c", "import sys; from mailmigrator.ops.cli import main; sys.exit(main())"]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> float:
    """Poll `condition` until true; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


@dataclass
class ServeNode:
    """One running `serve` process."""

    name: str
    host: str
    imap_port: int
    config: Path
    log: Path
    process: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_events(self, event: str) -> list[dict[str, object]]:
        """The node's JSON log records named `event`, oldest first."""
        found = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == event:
                    found.append(record)
        return found

    def run_state(self) -> str:
        """The run state this node last said it obeys ("stopped" until it logs a change)."""
        changes = self.log_events("run state changed")
        return str(changes[-1]["state"]) if changes else "stopped"

    def answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.imap_port), timeout=1) as s:
                return s.recv(64).startswith(b"* OK")
        except OSError:
            return False

    def imap_login(self, login: str, password: str) -> imaplib.IMAP4:
        client = imaplib.IMAP4(self.host, self.imap_port, timeout=20)
        client.login(login, password)
        return client

    def terminate(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last checkpoint; what a crashed host looks like."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def node_config(base_config: str, store_url: str, host: str, imap_port: int, pop3_port: int, name: str,
                lease_seconds: float, credential_key: Path) -> str:
    """A per-node config from the proxy tests' config text: shared store and vault key, own listeners and name."""
    text = re.sub(r'^url = ".*"$', f'url = "{store_url}"\ncredential_key_file = "{credential_key}"',
                  base_config, count=1, flags=re.M)
    text = re.sub(r'^imap = \[".*"\]$', f'imap = ["{host}:{imap_port}"]', text, count=1, flags=re.M)
    text = re.sub(r'^pop3 = \[".*"\]$', f'pop3 = ["{host}:{pop3_port}"]', text, count=1, flags=re.M)
    return text.replace("[migration]\n", f'[migration]\nnode_name = "{name}"\nlease_seconds = {lease_seconds}\n', 1)


@contextlib.contextmanager
def fleet(base_config: Path, store_url: str, workdir: Path, count: int = 3,
          lease_seconds: float = 10.0) -> Iterator[list[ServeNode]]:
    """`count` serve nodes on 127.0.0.2 ... sharing `store_url`; all terminated afterwards."""
    base = base_config.read_text()
    nodes: list[ServeNode] = []
    try:
        for n in range(count):
            host = f"127.0.0.{n + 2}"
            name = f"node-{n + 1}"
            directory = workdir / name
            directory.mkdir(parents=True, exist_ok=True)
            imap_port, pop3_port = free_port(host), free_port(host)
            config = directory / "mailmigrator.toml"
            config.write_text(node_config(base, store_url, host, imap_port, pop3_port, name, lease_seconds,
                                          workdir / "credentials.key"))
            log = directory / "serve.log"
            with log.open("wb") as err:
                process = subprocess.Popen([*SERVE, "--config", str(config), "serve"],
                                           stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            nodes.append(ServeNode(name, host, imap_port, config, log, process))
        for node in nodes:
            wait_for(lambda: node.answers() or node.process.poll() is not None, f"{node.name} to listen")
            assert node.process.poll() is None, f"{node.name} exited:\n{node.log_text()[-3000:]}"
        yield nodes
    finally:
        for node in nodes:
            node.terminate()


def cli(config: Path, *args: str) -> int:
    """Run a `mailmigrator` command against a node's config, in this process."""
    return cli_main(["--config", str(config), *args])
