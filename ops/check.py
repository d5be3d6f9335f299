"""`mailmigrator check`: what a migration will meet, found without writing anything anywhere.

Each row is one thing checked; a problem row says what to change. Servers are probed
(reachable, TLS as configured with the certificate checked, capabilities), logins are
tried, paths are checked with os.access, the store is opened read-only. With LOGIN the
account's folder plan comes from `account_plan`, the planning code the IMAP copy runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import poplib
import socket
import sqlite3
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from imapclient import IMAPClient

from mailmigrator.adapters.mail.connection import SOCKET_TIMEOUT, ServerAddress, describe_error, tls_context
from mailmigrator.adapters.imap.target import ImapTarget
from mailmigrator.adapters.mail.copier import account_plan
from mailmigrator.adapters.mail.servers import MailServers
from mailmigrator.adapters.store.event_store import check_store, parse_store_url, read_key_file, store_environment
from mailmigrator.adapters.store.vault import KEY_CHECK_LABEL, CredentialVault, VaultError, opens_key_check, read_key
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.logins import normalise_login
from mailmigrator.ops.config import Config, ConfigError
from mailmigrator.ops.preflight import copy_engine_choice, _writable_directory

PROBE_TIMEOUT = 10.0
IMAP_CAPABILITIES = ("LITERAL+", "MULTIAPPEND", "UIDPLUS", "CONDSTORE", "QRESYNC", "SPECIAL-USE", "NAMESPACE")
# RFC 5804 section 1.7: the greeting is capability lines, then OK; a few kilobytes at most.
MAX_GREETING = 8192


@dataclass
class Row:
    item: str
    ok: bool
    detail: str


def cmd_check(config: Config, args: argparse.Namespace) -> int:
    from mailmigrator.ops.composition import mail_servers

    rows: list[Row] = []
    login = normalise_login(args.login, config.migration.primary_domain) if args.login else None
    try:
        servers = mail_servers(config)
    except ConfigError as e:
        rows.append(Row("configuration", False, str(e)))
        servers = None
    if config.source is not None:
        s = config.source
        address = ServerAddress(s.host, s.pop3_port if s.protocol == "pop3" else s.imap_port, s.tls, s.ca_file,
                                s.verify_certificate)
        rows.append(_imap_row("[source] IMAP", address) if s.protocol != "pop3" else _pop3_row("[source] POP3", address))
        if s.protocol == "both":
            rows.append(_pop3_row("[source] POP3", ServerAddress(s.host, s.pop3_port, s.tls, s.ca_file,
                                                                 s.verify_certificate)))
        rows.append(_sieve_row("[source] ManageSieve", s.host, s.managesieve_port))
    if config.target is not None:
        t = config.target
        rows.append(_imap_row("[target] IMAP", ServerAddress(t.host, t.port, t.tls, t.ca_file, t.verify_certificate)))
        rows.append(_sieve_row("[target] ManageSieve", t.host, t.managesieve_port))
        rows += _path_rows(config)
    rows += _store_rows(config)
    if servers is not None:
        rows += _login_rows(config, servers, login, args)
    problems = [row for row in rows if not row.ok]
    if args.json:
        print(json.dumps({"rows": [asdict(row) for row in rows], "problems": len(problems)}, indent=2))
    else:
        for row in rows:
            print(f"{'ok ' if row.ok else 'BAD'}  {row.item:28} {row.detail}")
        print(f"{len(problems)} problem(s)" if problems else "no problems found", file=sys.stderr)
    return 1 if problems else 0


def _imap_row(item: str, address: ServerAddress) -> Row:
    context = tls_context(address) if address.tls != "disable" else None
    try:
        client = IMAPClient(address.host, address.port, ssl=address.tls == "direct", ssl_context=context,
                            timeout=PROBE_TIMEOUT)
        try:
            tls = "implicit TLS" if address.tls == "direct" else "plain"
            if context is not None and address.tls == "detect" and client.has_capability("STARTTLS"):
                client.starttls(context)
                tls = "STARTTLS"
            offered = [c for c in IMAP_CAPABILITIES if client.has_capability(c)]
        finally:
            _close_quietly(client)
    except Exception as e:  # noqa: BLE001 - every failure is a row
        return Row(item, False, f"{address}: {describe_error(e)}; check host, port, tls and ca_file")
    missing = [c for c in IMAP_CAPABILITIES if c not in offered]
    return Row(item, True, f"{address} {tls}; offers {' '.join(offered) or '-'}"
               + (f"; lacks {' '.join(missing)}" if missing else ""))


def _close_quietly(client: IMAPClient) -> None:
    """Log out; a failure here must not hide the probe's own."""
    try:
        client.logout()
    except Exception:  # noqa: BLE001 - the probe is over either way
        with contextlib.suppress(Exception):
            client.shutdown()


def _pop3_row(item: str, address: ServerAddress) -> Row:
    context = tls_context(address) if address.tls != "disable" else None
    try:
        client: poplib.POP3 = (poplib.POP3_SSL(address.host, address.port, context=context, timeout=PROBE_TIMEOUT)
                               if address.tls == "direct" else poplib.POP3(address.host, address.port,
                                                                           timeout=PROBE_TIMEOUT))
        try:
            capabilities = client.capa()
            if context is not None and address.tls == "detect" and "STLS" in capabilities:
                client.stls(context)
                capabilities = client.capa()
        finally:
            client.quit()
    except Exception as e:  # noqa: BLE001
        return Row(item, False, f"{address}: {describe_error(e)}; check host, pop3_port, tls and ca_file")
    uidl = "UIDL" in capabilities
    return Row(item, uidl, f"{address}; {'offers UIDL' if uidl else 'no UIDL: POP3 copies cannot resume'}")


def sieve_capabilities(greeting: bytes) -> dict[str, str] | None:
    """The capability lines of a ManageSieve greeting (RFC 5804 section 1.7), None when it does not end in OK."""
    out: dict[str, str] = {}
    for line in greeting.split(b"\r\n"):
        if line.startswith(b"OK"):
            return out
        if line.startswith(b'"'):
            name, _, value = line[1:].partition(b'"')
            out[name.decode("utf-8", "replace").upper()] = value.strip().strip(b'"').decode("utf-8", "replace")
        elif line:
            return None
    return None


def _sieve_row(item: str, host: str, port: int) -> Row:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as sock:
            greeting = b""
            while b"\r\nOK" not in b"\r\n" + greeting and len(greeting) < MAX_GREETING:
                chunk = sock.recv(2048)
                if not chunk:
                    break
                greeting += chunk
    except OSError as e:
        return Row(item, True, f"{host}:{port}: not reachable ({describe_error(e)}); Sieve scripts cannot move")
    capabilities = sieve_capabilities(greeting)
    if capabilities is None:
        return Row(item, True, f"{host}:{port}: not a ManageSieve greeting; set managesieve_port")
    return Row(item, True, f"{host}:{port} ManageSieve; SIEVE {capabilities.get('SIEVE', '-')}")


def _path_rows(config: Config) -> list[Row]:
    assert config.target is not None
    t = config.target
    rows = []
    for key, path in (("passwd_file", t.passwd_file if t.provisioning == "passwd-file" else None),
                      ("alias_map", t.alias_map), ("transport_map", t.transport_map)):
        if path is None:
            continue
        try:
            _writable_directory(path, f"[target] {key}")
        except ConfigError as e:
            rows.append(Row(f"[target] {key}", False, str(e)))
        else:
            rows.append(Row(f"[target] {key}", True, f"{path} writable"))
    try:
        rows.append(Row("[target] engine", True, copy_engine_choice(t, config.source)))
    except ConfigError as e:
        rows.append(Row("[target] engine", False, str(e)))
    return rows


def _store_rows(config: Config) -> list[Row]:
    """The store opened read-only: it must exist to be checked; the vault key must open its key check."""
    location = parse_store_url(config.store.url, config.base_dir)
    try:
        if location.kind == "sqlite":
            # check_store's read-only open would leave -wal and -shm files beside a WAL store.
            assert location.sqlite_path is not None
            exists = location.sqlite_path.exists()
            if exists:
                with contextlib.closing(sqlite3.connect(_immutable(location.sqlite_path), uri=True)) as db:
                    db.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        else:
            exists = check_store(location, must_exist=False, lock_timeout=config.store.lock_timeout)
    except sqlite3.DatabaseError as e:
        return [Row("[store] url", False, f"{location.describe()} cannot be opened ({e}); check [store] url")]
    except Exception as e:  # noqa: BLE001
        return [Row("[store] url", False, describe_error(e))]
    if not exists:
        return [Row("[store] url", True, f"{location.describe()}: not created yet (the first command creates it)")]
    rows = [Row("[store] url", True, location.describe())]
    if config.source is not None and config.source.admin_user:
        return rows
    key_file = config.store.credential_key_file or config.base_dir / "credentials.key"
    try:
        key = read_key(key_file)
    except (VaultError, OSError) as e:
        return rows + [Row("[store] credential_key_file", False, f"{e}")]
    sealed = _sealed_key_check(config)
    matches = None if sealed is None else opens_key_check(sealed, key)
    if matches is False:
        rows.append(Row("[store] credential_key_file", False, f"{key_file} is not the key this store's credential "
                        "vault was sealed with; copy the first node's key file here"))
    else:
        rows.append(Row("[store] credential_key_file", True, f"{key_file}" + (" matches the vault" if matches
                                                                            else " (vault not sealed yet)")))
    return rows


def _immutable(path: Path) -> str:
    return f"{path.resolve().as_uri()}?mode=ro&immutable=1"


def _quota_row(target: ImapTarget, planned_bytes: int) -> Row:
    """Room on the new server for the planned bytes, where it reports QUOTA (RFC 9208 GETQUOTAROOT, STORAGE in KiB)."""
    if not target.client.has_capability("QUOTA"):
        return Row("[target] quota", True, "the new server reports no QUOTA")
    try:
        _, quotas = target.client.get_quota_root("INBOX")
    except Exception as e:  # noqa: BLE001
        return Row("[target] quota", True, f"GETQUOTAROOT failed: {describe_error(e)}")
    storage = [q for q in quotas if str(q.resource).upper() == "STORAGE"]
    if not storage:
        return Row("[target] quota", True, "no STORAGE limit")
    room = min((q.limit - q.usage) * 1024 for q in storage)
    if planned_bytes > room:
        return Row("[target] quota", False, f"{room:,} bytes free, {planned_bytes:,} to copy; raise the account's "
                   "quota on the new server")
    return Row("[target] quota", True, f"{room:,} bytes free, {planned_bytes:,} to copy")


def _sealed_key_check(config: Config) -> bytes | None:
    location = parse_store_url(config.store.url, config.base_dir)
    if location.kind == "sqlite":
        # Read-only and immutable: no -wal or -shm file is created beside the store.
        assert location.sqlite_path is not None
        try:
            with contextlib.closing(sqlite3.connect(_immutable(location.sqlite_path), uri=True)) as db:
                row = db.execute("SELECT sealed FROM mm_vault_key WHERE label = ?",
                                 (KEY_CHECK_LABEL.decode(),)).fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else bytes(row[0])
    cipher = read_key_file(config.store.encryption_key_file) if config.store.encryption_key_file else None
    app = MigrationService(env=store_environment(location, cipher, config.store.lock_timeout) | {"CREATE_TABLE": "n"})
    try:
        return CredentialVault.sealed_key_check(app.factory)
    finally:
        app.close()


def _login_rows(config: Config, servers: MailServers, login: str | None, args: argparse.Namespace) -> list[Row]:
    who = login or config.migration.migration_account or None
    rows = []
    if who is None:
        return [Row("[target] master_user", True, "not tried: give LOGIN (or set migration_account)")]
    try:
        servers.open_target(servers.target_plan(who)).close()
        rows.append(Row("[target] master_user", True, f"{servers.target_plan(who).describe()} accepted"))
    except Exception as e:  # noqa: BLE001
        rows.append(Row("[target] master_user", False, f"{describe_error(e)}; check master_user and "
                        "master_password_file (and that the account exists on the new server)"))
    if login is None:
        return rows
    password = None
    if servers.source.admin is None:
        from mailmigrator.ops.manual_migration import read_old_password

        password = read_old_password(args, login)
    source_name = servers.source_name(args.login, login)
    try:
        plan = servers.copy_plan(source_name, login, password)
        source = servers.open_source(plan)
    except Exception as e:  # noqa: BLE001
        what = "[source] admin_user" if servers.source.admin is not None else "[source] login"
        return rows + [Row(what, False, f"{describe_error(e)}; check the password or the admin login")]
    rows.append(Row("[source] admin_user" if servers.source.admin is not None else "[source] login", True,
                    f"{plan.describe()} accepted"))
    try:
        target = servers.open_target(servers.target_plan(login))
    except Exception:  # noqa: BLE001 - reported by the master row above
        source.close()
        return rows
    try:
        folder_plan, counts = account_plan(source, target, config.migration.exclude_folders)
        limit = config.migration.max_message_size
        for folder in folder_plan.folders:
            messages, size = counts.get(folder.source, (0, 0))
            over = 0
            if limit and folder.selectable:
                over = sum(m.size > limit for m in source.open_folder(folder.source).messages)
            rows.append(Row(f"folder {folder.source}", over == 0,
                            f"-> {folder.target}; {messages} messages, {size} bytes"
                            + (f"; {over} over max_message_size, they will be skipped: raise it to copy them"
                               if over else "")))
        for excluded in folder_plan.excluded:
            rows.append(Row(f"folder {excluded.source}", True, f"excluded by {excluded.pattern!r}"))
        rows.append(_quota_row(target, sum(size for _, size in counts.values())))
    finally:
        source.close()
        target.close()
    if config.migration.sieve:
        rows += _script_rows(config, servers, source_name, login, password)
    return rows


def _script_rows(config: Config, servers: MailServers, source_name: str, login: str,
                 password: str | None) -> list[Row]:
    """The Sieve scripts the migration would move, read as the copy reads them."""
    from mailmigrator.adapters.sieve.servers import SievePorts, SieveServers

    assert config.source is not None and config.target is not None
    sieve = SieveServers(servers, SievePorts(config.source.managesieve_port, config.target.managesieve_port))
    try:
        found = sieve.old_scripts(source_name, login, password)
    except Exception as e:  # noqa: BLE001 - the migration would fail the same way
        return [Row("sieve scripts", False, f"{describe_error(e)}; check [source] managesieve_port and the login, "
                    "or set [migration] sieve = false")]
    if found is None:
        return [Row("sieve scripts", True, "the old server does not offer ManageSieve: no scripts will move")]
    scripts, active = found
    if not scripts:
        return [Row("sieve scripts", True, "none on the old server")]
    return [Row(f"sieve script {script.name}", True,
                f"{len(script.content)} bytes" + ("; active" if script.name == active else ""))
            for script in scripts]

