"""Shared pieces for the proxy tests: the Dovecot pair, a config file, a running service."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from mailmigrator.ops.config import Config, Endpoint

from testbed import DovecotServer, make_message, make_new_server, make_old_server, seed_bulk

OLD_PASSWORD = "old-secret-1 x"


@dataclass
class Pair:
    old: DovecotServer
    new: DovecotServer
    ca: trustme.CA
    workdir: Path


def start_pair(workdir: Path) -> Iterator[Pair]:
    ca = trustme.CA()
    old = make_old_server(workdir / "old", ca)
    new = make_new_server(workdir / "new", ca, pop3=True)
    old.start()
    try:
        new.start()
        try:
            yield Pair(old, new, ca, workdir)
        finally:
            new.stop()
    finally:
        old.stop()


def write_config(
    tmp: Path,
    pair: Pair,
    *,
    migration_account: str = "notice@example.com",
    passwords_only: bool = False,
    domains: dict[str, str] | None = None,
    listen: str = "127.0.0.1",
    extra_proxy: str = "",
    tls: bool = True,
    extra_migration: str = "",
    while_copying: str = "notice",
) -> Path:
    master = tmp / "master.secret"
    master.write_text(pair.new.master_password or "")
    master.chmod(0o600)
    ca_file = pair.workdir / "ca.pem"
    pair.ca.cert_pem.write_to_path(str(ca_file))
    cert, key = tmp / "proxy-cert.pem", tmp / "proxy-key.pem"
    leaf = pair.ca.issue_cert("localhost", "127.0.0.1", "127.0.0.2", "127.0.0.3")
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    domain_lines = "".join(f'"{ip}" = "{d}"\n' for ip, d in (domains or {}).items())
    tls_lines = f'imaps = ["{listen}:1"]\npop3s = ["{listen}:1"]\ntls_cert = "{cert}"\ntls_key = "{key}"\n' if tls else ""
    text = textwrap.dedent(f"""\
        [store]
        url = "sqlite:///{tmp / 'events.sqlite'}"

        [source]
        host = "127.0.0.1"
        protocol = "imap"
        login_format = "email"
        tls = "disable"
        imap_port = {pair.old.imap_port}
        pop3_port = {pair.old.pop3_port}

        [target]
        host = "127.0.0.1"
        port = {pair.new.imap_port}
        pop3_port = {pair.new.pop3_port}
        tls = "disable"
        master_user = "{pair.new.master_user}"
        master_password_file = "{master}"
        provisioning = "passwd-file"
        passwd_file = "{pair.new.passwd_file}"

        [proxy]
        imap = ["{listen}:1"]
        pop3 = ["{listen}:1"]
        """) + tls_lines + extra_proxy + textwrap.dedent(f"""
        [migration]
        migration_account = "{migration_account}"
        primary_domain = "example.com"
        passwords_only = {'true' if passwords_only else 'false'}
        while_copying = "{while_copying}"
        concurrency = 2
        """) + extra_migration + (f"\n[migration.domains]\n{domain_lines}" if domains else "")
    path = tmp / "mailmigrator.toml"
    path.write_text(text)
    return path


def seed_user(pair: Pair, login: str, messages: int = 5, password: str = OLD_PASSWORD) -> None:
    pair.old.add_user(login, password)
    seed_bulk(pair.old, login, "INBOX", [make_message(f"{login}-{i}") for i in range(messages)])
    seed_bulk(pair.old, login, "Archive/2020", [make_message(f"{login}-a{i}") for i in range(2)])


def ensure_notice_account(pair: Pair, login: str = "notice@example.com") -> None:
    pair.new.add_user(login, "notice-not-used")
    seed_bulk(pair.new, login, "INBOX", [make_message("notice", subject="Your mailbox is being moved")])


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    if os.geteuid() != 0:
        pytest.skip("the Dovecot test bed needs root")
    yield from start_pair(tmp_path_factory.mktemp("pair"))


def with_free_ports(config: Config) -> Config:
    """The config with every proxy listener on port 0 (the TOML parser rightly refuses 0)."""
    p = config.proxy
    free = lambda endpoints: tuple(Endpoint(e.host, 0) for e in endpoints)  # noqa: E731
    proxy = p.model_copy(update={"imap": free(p.imap), "imaps": free(p.imaps), "pop3": free(p.pop3),
                                 "pop3s": free(p.pop3s)})
    return config.model_copy(update={"proxy": proxy})
