"""The configuration file: strict TOML, every key typed, relative paths resolved.

Keys and meanings follow the contract in shared/spec/config.example.toml.
An unknown key, a wrong type or a bad value is a `ConfigError` whose message
is one line naming the key and what to do.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailmigrator.adapters.scripts.post_migrate import PASSWORD_HANDOVERS
from mailmigrator.domain.errors import ExplainedError


class ConfigError(ExplainedError):
    """The configuration cannot be used; the message names the key."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class StoreConfig:
    url: str
    encryption_key_file: Path | None = None
    lock_timeout: float = 10.0
    # The credential vault's AES key; created with mode 0600 on first use.
    credential_key_file: Path | None = None


@dataclass(frozen=True)
class SourceConfig:
    host: str
    protocol: str = "imap"
    tls: str = "detect"
    imap_port: int = 143
    pop3_port: int = 110
    ca_file: Path | None = None
    verify_certificate: bool = True
    login_format: str = "as-typed"
    admin_user: str = ""
    admin_password_file: Path | None = None
    admin_login: str = "sasl"


@dataclass(frozen=True)
class TargetConfig:
    host: str = "127.0.0.1"
    port: int = 143
    pop3_port: int = 110
    tls: str = "disable"
    ca_file: Path | None = None
    verify_certificate: bool = True
    master_user: str = ""
    master_password_file: Path | None = None
    provisioning: str = "passwd-file"
    passwd_file: Path | None = None
    password_scheme: str = "SHA512-CRYPT"
    postgresql_url: str = ""
    postgresql_table: str = "users"
    alias_map: Path | None = None


@dataclass(frozen=True)
class ProxyConfig:
    imap: tuple[Endpoint, ...] = ()
    imaps: tuple[Endpoint, ...] = ()
    pop3: tuple[Endpoint, ...] = ()
    pop3s: tuple[Endpoint, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_tls_for_login: bool = False
    # Connection limits (the proxy's own; see adapters/proxy/listeners.py ProxyLimits).
    max_connections: int = 20_000
    max_connections_per_address: int = 1_000
    login_timeout: float = 120.0
    send_timeout: float = 30.0
    relay_send_timeout: float = 600.0


@dataclass(frozen=True)
class MigrationConfig:
    migration_account: str = ""
    log_file: Path | None = None
    access_mode: str = "username"
    use_x_envelope_to: bool = True
    passwords_only: bool = False
    post_migrate_script: Path | None = None
    post_migrate_timeout: float = 60.0
    # How the script gets the password: stdin (a line), env (MAILMIGRATOR_PASSWORD) or argv (visible in `ps`).
    post_migrate_password: str = "stdin"
    primary_domain: str = ""
    concurrency: int = 4
    connections_per_source_host: int = 8
    adaptive_connections: bool = True
    exclude_folders: tuple[str, ...] = ()
    max_message_size: int = 0
    domains: dict[str, str] = field(default_factory=dict)
    # Several nodes on one store: who this node is, and how long its claim on an account lasts unrenewed.
    node_name: str = ""
    lease_seconds: float = 120.0


@dataclass(frozen=True)
class AdminConfig:
    listen: tuple[Endpoint, ...] = ()
    password_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass(frozen=True)
class Config:
    path: Path
    store: StoreConfig
    source: SourceConfig | None
    target: TargetConfig | None
    proxy: ProxyConfig
    migration: MigrationConfig
    admin: AdminConfig

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def general_settings(self) -> dict[str, Any]:
        """The seed's General tab as recorded on the run: no secrets, primitives only."""
        source = self.source
        m = self.migration
        return {
            "source_host": source.host if source else "",
            "source_protocol": source.protocol if source else "",
            "source_tls": source.tls if source else "",
            "migration_account": m.migration_account,
            "log_file": str(m.log_file) if m.log_file else "",
            "access_mode": m.access_mode,
            "domains": dict(sorted(m.domains.items())),
            "passwords_only": m.passwords_only,
            "post_migrate_script": str(m.post_migrate_script) if m.post_migrate_script else "",
            "primary_domain": m.primary_domain,
        }


# key -> (type, default); a type is a python type, or a tuple of allowed strings.
_STRING, _INT, _BOOL, _FLOAT, _PATH, _LIST, _ENDPOINTS = "str", "int", "bool", "float", "path", "list", "endpoints"

_SCHEMA: dict[str, dict[str, Any]] = {
    "store": {"url": _STRING, "encryption_key_file": _PATH, "lock_timeout": _FLOAT, "credential_key_file": _PATH},
    "source": {
        "host": _STRING,
        "protocol": ("imap", "pop3", "both"),
        "tls": ("detect", "direct", "disable"),
        "imap_port": _INT,
        "pop3_port": _INT,
        "ca_file": _PATH,
        "verify_certificate": _BOOL,
        "login_format": ("as-typed", "email", "local-part"),
        "admin_user": _STRING,
        "admin_password_file": _PATH,
        "admin_login": ("sasl", "dovecot-master"),
    },
    "target": {
        "host": _STRING,
        "port": _INT,
        "pop3_port": _INT,
        "tls": ("detect", "direct", "disable"),
        "ca_file": _PATH,
        "verify_certificate": _BOOL,
        "master_user": _STRING,
        "master_password_file": _PATH,
        "provisioning": ("passwd-file", "postgresql"),
        "passwd_file": _PATH,
        "password_scheme": ("SHA512-CRYPT", "SHA256-CRYPT", "ARGON2ID", "BLF-CRYPT"),
        "postgresql_url": _STRING,
        "postgresql_table": _STRING,
        "alias_map": _PATH,
    },
    "proxy": {
        "imap": _ENDPOINTS,
        "imaps": _ENDPOINTS,
        "pop3": _ENDPOINTS,
        "pop3s": _ENDPOINTS,
        "tls_cert": _PATH,
        "tls_key": _PATH,
        "require_tls_for_login": _BOOL,
        "max_connections": _INT,
        "max_connections_per_address": _INT,
        "login_timeout": _FLOAT,
        "send_timeout": _FLOAT,
        "relay_send_timeout": _FLOAT,
    },
    "migration": {
        "migration_account": _STRING,
        "log_file": _PATH,
        "access_mode": ("username", "standard", "extended"),
        "use_x_envelope_to": _BOOL,
        "passwords_only": _BOOL,
        "post_migrate_script": _PATH,
        "post_migrate_timeout": _FLOAT,
        "post_migrate_password": PASSWORD_HANDOVERS,
        "primary_domain": _STRING,
        "concurrency": _INT,
        "connections_per_source_host": _INT,
        "adaptive_connections": _BOOL,
        "exclude_folders": _LIST,
        "max_message_size": _INT,
        "domains": "table",
        "node_name": _STRING,
        "lease_seconds": _FLOAT,
    },
    "admin": {"listen": _ENDPOINTS, "password_file": _PATH, "tls_cert": _PATH, "tls_key": _PATH},
}


def default_config_path() -> Path:
    return Path(os.environ.get("MAILMIGRATOR_CONFIG") or "mailmigrator.toml")


def load_config(path: Path, *, allow_missing: bool = False) -> Config:
    """Read and check the configuration file at `path`.

    With `allow_missing`, a file that does not exist gives the defaults
    (an SQLite store beside where the file would be).
    """
    path = path.resolve() if path.exists() else Path(os.path.abspath(path))
    if not path.exists():
        if not allow_missing:
            raise ConfigError(f"config file {path} does not exist; pass --config FILE or set MAILMIGRATOR_CONFIG")
        raw: dict[str, Any] = {}
    else:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"config file {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    return _build(path, raw)


def _build(path: Path, raw: dict[str, Any]) -> Config:
    base = path.parent
    for section, value in raw.items():
        if section not in _SCHEMA:
            raise ConfigError(f"unknown section [{section}] in {path.name}; known: {', '.join(_SCHEMA)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{section} must be a table [{section}]")
    sections = {name: _section(name, raw.get(name, {}), base) for name in _SCHEMA}

    store = sections["store"]
    store_cfg = StoreConfig(
        url=store.get("url") or f"sqlite://{base / 'mailmigrator.sqlite'}",
        encryption_key_file=store.get("encryption_key_file"),
        lock_timeout=store.get("lock_timeout", 10.0),
        credential_key_file=store.get("credential_key_file") or base / "credentials.key",
    )

    source_cfg = None
    if raw.get("source"):
        s = dict(sections["source"])
        if not s.get("host"):
            raise ConfigError("[source] host is missing: name the old server, e.g. host = \"old.example.com\"")
        host, port = _split_host_port(s["host"], "[source] host")
        s["host"] = host
        direct = s.get("tls", "detect") == "direct"
        imap_default, pop3_default = (993, 995) if direct else (143, 110)
        if port is not None:
            if s.get("protocol", "imap") == "pop3":
                s.setdefault("pop3_port", port)
            else:
                s.setdefault("imap_port", port)
        s.setdefault("imap_port", imap_default)
        s.setdefault("pop3_port", pop3_default)
        if s.get("admin_user") and not s.get("admin_password_file"):
            raise ConfigError("[source] admin_user needs admin_password_file (a file of mode 0600 holding the password)")
        source_cfg = SourceConfig(**s)

    target_cfg = None
    if raw.get("target"):
        t = dict(sections["target"])
        if "host" in t:
            host, port = _split_host_port(t["host"], "[target] host")
            t["host"] = host
            if port is not None:
                t.setdefault("port", port)
        # As in [source]: the standard ports; 0 stays an explicit "no POP3 on the new server".
        direct = t.get("tls") == "direct"
        t.setdefault("port", 993 if direct else 143)
        t.setdefault("pop3_port", 995 if direct else 110)
        if t.get("provisioning", "passwd-file") == "postgresql" and not t.get("postgresql_url"):
            raise ConfigError("[target] provisioning = \"postgresql\" needs postgresql_url")
        target_cfg = TargetConfig(**t)

    proxy_cfg = ProxyConfig(**sections["proxy"])
    if (proxy_cfg.imaps or proxy_cfg.pop3s) and not (proxy_cfg.tls_cert and proxy_cfg.tls_key):
        raise ConfigError("[proxy] imaps/pop3s listeners need tls_cert and tls_key")
    for key in ("max_connections", "max_connections_per_address", "login_timeout", "send_timeout", "relay_send_timeout"):
        if getattr(proxy_cfg, key) <= 0:
            raise ConfigError(f"[proxy] {key} must be a positive number")

    m = dict(sections["migration"])
    if "domains" in m:
        m["domains"] = _domains(m["domains"])
    if m.get("concurrency", 4) < 1:
        raise ConfigError("[migration] concurrency must be at least 1")
    if m.get("connections_per_source_host", 8) < 1:
        raise ConfigError("[migration] connections_per_source_host must be at least 1")
    if m.get("max_message_size", 0) < 0:
        raise ConfigError("[migration] max_message_size must be 0 (no limit) or a positive number of bytes")
    if m.get("post_migrate_timeout", 60.0) <= 0:
        raise ConfigError("[migration] post_migrate_timeout must be a positive number of seconds")
    if m.get("lease_seconds", 120.0) < 5:
        raise ConfigError("[migration] lease_seconds must be at least 5 (seconds a node's claim on an account lasts)")
    m["node_name"] = str(m.get("node_name", "")).strip() or default_node_name(proxy_cfg)
    primary = str(m.get("primary_domain", "")).strip().lower()
    m["primary_domain"] = primary
    m["migration_account"] = str(m.get("migration_account", "")).strip().lower()
    migration_cfg = MigrationConfig(**m)

    admin_cfg = AdminConfig(**sections["admin"]) if raw.get("admin") else AdminConfig(
        listen=(Endpoint("127.0.0.1", 8025),)
    )
    return Config(
        path=path,
        store=store_cfg,
        source=source_cfg,
        target=target_cfg,
        proxy=proxy_cfg,
        migration=migration_cfg,
        admin=admin_cfg,
    )


def default_node_name(proxy: ProxyConfig) -> str:
    """The host name, plus the first proxy listener so that two nodes on one host differ."""
    listeners = proxy.imap + proxy.imaps + proxy.pop3 + proxy.pop3s
    host = socket.gethostname()
    return f"{host}/{listeners[0]}" if listeners else host


def _section(name: str, values: dict[str, Any], base: Path) -> dict[str, Any]:
    schema = _SCHEMA[name]
    out: dict[str, Any] = {}
    for key, value in values.items():
        if name == "migration" and key == "domains":
            if not isinstance(value, dict):
                raise ConfigError("[migration.domains] must be a table of \"IP\" = \"domain\"")
            out[key] = value
            continue
        kind = schema.get(key)
        if kind is None:
            raise ConfigError(f"unknown key [{name}] {key}; check its spelling against ops/mailmigrator.example.toml")
        out[key] = _convert(f"[{name}] {key}", kind, value, base)
    return out


def _convert(where: str, kind: Any, value: Any, base: Path) -> Any:
    if isinstance(kind, tuple):
        if value not in kind:
            raise ConfigError(f"{where} = {value!r} is not one of: {', '.join(kind)}")
        return value
    if kind == _STRING:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string (in quotes)")
        return value
    if kind == _INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be a whole number")
        return value
    if kind == _FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number")
        return float(value)
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if kind == _PATH:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a path in quotes")
        if value == "":
            return None
        p = Path(value)
        return p if p.is_absolute() else base / p
    if kind == _LIST:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, e.g. [\"Trash\"]")
        return tuple(value)
    if kind == _ENDPOINTS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of \"address:port\" strings")
        endpoints = []
        for item in value:
            host, port = _split_host_port(item, where)
            if port is None:
                raise ConfigError(f"{where}: {item!r} has no port; write \"address:port\"")
            endpoints.append(Endpoint(host, port))
        return tuple(endpoints)
    raise AssertionError(kind)  # pragma: no cover


def _split_host_port(value: str, where: str) -> tuple[str, int | None]:
    value = value.strip()
    if not value:
        raise ConfigError(f"{where} is empty")
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{where}: {port_text!r} is not a port number (1-65535)")
    return host, int(port_text)


def _domains(table: dict[str, Any]) -> dict[str, str]:
    out = {}
    for address, domain in table.items():
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(f"[migration.domains] {address!r} is not an IP address") from None
        if not isinstance(domain, str) or "." not in domain:
            raise ConfigError(f"[migration.domains] {address!r} must map to a domain name string")
        out[address] = domain.strip().lower()
    return out


def read_secret_file(path: Path | None, where: str) -> str:
    """Read a secret from a file that only its owner can read."""
    if path is None:
        raise ConfigError(f"{where} is not set; it must name a file of mode 0600 holding the secret")
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{where} {path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{where} {path} can be read by others; chmod 600 it")
    secret = text.rstrip("\r\n")
    if not secret:
        raise ConfigError(f"{where} {path} is empty")
    return secret
