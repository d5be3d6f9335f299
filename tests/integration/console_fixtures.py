"""A console served by hypercorn on a loopback port, over a fresh store, for the API and browser tests."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from mailmigrator.ops.config import Config, load_config
from mailmigrator.ops.console.auth import AdminPassword, hash_admin_password
from mailmigrator.ops.console.manual import ManualMigrations
from mailmigrator.ops.console.server import Console, build_console
from mailmigrator.ops.composition import OpenStore, open_store

ADMIN_PASSWORD = "console-admin-Ä9!"


@dataclass
class RunningConsole:
    url: str
    console: Console
    wired: OpenStore
    config: Config

    def client(self, source: str | None = None) -> httpx.AsyncClient:
        """A client connecting from `source` (any 127/8 address) when given."""
        transport = httpx.AsyncHTTPTransport(local_address=source) if source else None
        return httpx.AsyncClient(base_url=self.url, timeout=30.0, transport=transport)

    @asynccontextmanager
    async def logged_in(self) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
        """A client holding a session cookie, and the headers that carry its CSRF token."""
        async with self.client() as client:
            response = await client.post("/api/login", json={"password": ADMIN_PASSWORD})
            assert response.status_code == 200, response.text
            yield client, {"X-CSRF-Token": response.json()["csrf_token"]}


def console_config(tmp_path: Path, extra: str = "") -> Config:
    path = tmp_path / "mm.toml"
    path.write_text(textwrap.dedent(f"""\
        [store]
        url = "sqlite:///{tmp_path / 'events.sqlite'}"
        lock_timeout = 2
        [source]
        host = "127.0.0.1:1"
        tls = "disable"
        admin_user = "srcadmin"
        admin_password_file = "{tmp_path / 'source-admin.secret'}"
        [migration]
        log_file = "{tmp_path / 'migration.log'}"
        primary_domain = "example.com"
        migration_account = "notice@example.com"
        while_copying = "notice"
        access_mode = "standard"
        [migration.domains]
        "192.0.2.1" = "navi1.com"
        """) + extra)
    return load_config(path)


@asynccontextmanager
async def serve_console(
    config: Config, wired: OpenStore, *, manual: ManualMigrations | None = None,
) -> AsyncIterator[RunningConsole]:
    """Serve the console until the `async with` block ends."""
    app, console = build_console(config, wired, AdminPassword(hash_admin_password(ADMIN_PASSWORD)), manual=manual)
    hc = HypercornConfig()
    hc.bind = ["127.0.0.1:0"]
    hc.accesslog = None
    hc.graceful_timeout = 0.5
    async with trio.open_nursery() as nursery:
        await nursery.start(console.manual.run)
        binds = await nursery.start(partial(hypercorn_serve, app, hc, mode="asgi"))
        yield RunningConsole(binds[0], console, wired, config)
        nursery.cancel_scope.cancel()


def open_wired(config: Config) -> OpenStore:
    wired = open_store(config, create=True)
    assert wired is not None
    return wired
