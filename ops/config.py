"""The configuration file: strict TOML, every key typed, relative paths resolved.

Keys and meanings are those of `ops/mailmigrator.example.toml` and the README; the
models below are the schema (one per TOML section) and hold every default.
An unknown key, a wrong type or a bad value is a `ConfigError` whose message
is one line naming the key and what to do.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from mailmigrator.adapters.proxy.listeners import ProxyLimits
from mailmigrator.adapters.scripts.post_migrate import PasswordHandover
from mailmigrator.domain.errors import ExplainedError
from mailmigrator.domain.model import DEFAULT_LEASE_SECONDS
from mailmigrator.domain.states import DEFAULT_WHILE_COPYING


class ConfigError(ExplainedError):
    """The configuration cannot be used; the message names the key."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class _Origin:
    """The validation context: where the file is, for its relative paths and file-relative defaults."""

    path: Path


def _base_dir(info: ValidationInfo) -> Path | None:
    return info.context.path.parent if isinstance(info.context, _Origin) else None


def _refusal(message: str, key: str | None = None) -> PydanticCustomError:
    """A bad value; `message` follows the key's name. `key` names it for checks that see the whole section."""
    return PydanticCustomError("config", "{message}", {"message": message} | ({"key": key} if key else {}))


def _split_host_port(value: str, key: str | None = None) -> tuple[str, int | None]:
    """`host`, `host:port` or `[v6 address]:port`; a bare IPv6 address has no port."""
    value = value.strip()
    if not value:
        raise _refusal(" is empty", key)
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
        raise _refusal(f": {port_text!r} is not a port number (1-65535)", key)
    return host, int(port_text)


def _path(value: object, info: ValidationInfo) -> Path | None:
    if value is None or isinstance(value, Path):
        return value
    if not isinstance(value, str):
        raise _refusal(" must be a path in quotes")
    if value == "":
        return None
    path, base = Path(value), _base_dir(info)
    return base / path if base is not None and not path.is_absolute() else path


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, tuple):
        return value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _refusal(' must be a list of strings, e.g. ["Trash"]')
    return tuple(value)


def _endpoints(value: object) -> tuple[Endpoint, ...]:
    if isinstance(value, tuple):
        return value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _refusal(' must be a list of "address:port" strings')
    endpoints = []
    for item in value:
        host, port = _split_host_port(item)
        if port is None:
            raise _refusal(f': {item!r} has no port; write "address:port"')
        endpoints.append(Endpoint(host, port))
    return tuple(endpoints)


def _domains(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _refusal(' must be a table of "IP" = "domain"')
    domains = {}
    for address, domain in value.items():
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise _refusal(f": {address!r} is not an IP address") from None
        if not isinstance(domain, str) or "." not in domain:
            raise _refusal(f": {address!r} must map to a domain name string")
        domains[address] = domain.strip().lower()
    return domains


ConfigPath = Annotated[Path | None, BeforeValidator(_path)]
Strings = Annotated[tuple[str, ...], BeforeValidator(_strings)]
Endpoints = Annotated[tuple[Endpoint, ...], BeforeValidator(_endpoints)]
Domains = Annotated[dict[str, str], BeforeValidator(_domains)]
Stripped = Annotated[str, AfterValidator(str.strip)]
Folded = Annotated[str, AfterValidator(lambda text: text.strip().lower())]
TlsMode = Literal["detect", "direct", "disable"]
Port = Annotated[int, Field(ge=1, le=65535)]


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def is_smtp_next_hop(value: str) -> bool:
    """Postfix smtp(8) next hop: `host`, `host:port`, `[host]`, `[host]:port` or `[ipv6:ADDR]:port`."""
    bracketed = value.startswith("[")
    if bracketed:
        host, _, rest = value[1:].partition("]")
        if rest and not rest.startswith(":"):
            return False
        port = rest[1:] if rest else None
    else:
        host, _, port_text = value.partition(":")
        port = port_text if ":" in value else None
    if port is not None and not (port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        return False
    if bracketed and host.lower().startswith("ipv6:"):
        try:
            ipaddress.IPv6Address(host[5:])
        except ValueError:
            return False
        return True
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _with_standard_ports(data: object, imap_key: str, host_port_key: str) -> object:
    """Move a port written into `host` to `host_port_key`; unset ports are the standard ones of the TLS mode."""
    if not isinstance(data, dict):
        return data
    values = dict(data)
    host = values.get("host")
    if isinstance(host, str):
        values["host"], port = _split_host_port(host, "host")
        if port is not None:
            values.setdefault(host_port_key, port)
    direct = values.get("tls") == "direct"
    values.setdefault(imap_key, 993 if direct else 143)
    values.setdefault("pop3_port", 995 if direct else 110)
    return values


class _Section(BaseModel):
    # strict: TOML values are typed already, so "143" is not a port and 1 is not true.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class StoreConfig(_Section):
    url: str = Field(default="", validate_default=True)
    encryption_key_file: ConfigPath = None
    lock_timeout: float = 10.0
    # The credential vault's AES key; created with mode 0600 on first use.
    credential_key_file: ConfigPath = Field(default=None, validate_default=True)

    @field_validator("url")
    @classmethod
    def _sqlite_beside_the_file(cls, url: str, info: ValidationInfo) -> str:
        base = _base_dir(info)
        return f"sqlite://{base / 'mailmigrator.sqlite'}" if not url and base is not None else url

    @field_validator("credential_key_file")
    @classmethod
    def _key_beside_the_file(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        base = _base_dir(info)
        return base / "credentials.key" if path is None and base is not None else path


class SourceConfig(_Section):
    host: str = Field(description='name or IP of the old server, e.g. "old.example.com"')
    protocol: Literal["imap", "pop3", "both"] = "imap"
    tls: TlsMode = "detect"
    imap_port: Port
    pop3_port: Port
    ca_file: ConfigPath = None
    verify_certificate: bool = True
    login_format: Literal["as-typed", "email", "local-part"] = "as-typed"
    admin_user: str = ""
    managesieve_port: Port = 4190
    admin_password_file: ConfigPath = None
    admin_login: Literal["sasl", "dovecot-master"] = "sasl"

    @model_validator(mode="before")
    @classmethod
    def _ports(cls, data: object) -> object:
        protocol = data.get("protocol") if isinstance(data, dict) else None
        return _with_standard_ports(data, "imap_port", "pop3_port" if protocol == "pop3" else "imap_port")

    @model_validator(mode="after")
    def _admin_login_has_a_password(self) -> SourceConfig:
        if self.admin_user and not self.admin_password_file:
            raise _refusal(" needs admin_password_file (a file of mode 0600 holding the password)", "admin_user")
        return self


class TargetConfig(_Section):
    host: str = "127.0.0.1"
    port: Port
    pop3_port: int = Field(ge=0, le=65535, description="0 = no POP3 on the new server")
    managesieve_port: Port = 4190
    tls: TlsMode = "disable"
    ca_file: ConfigPath = None
    verify_certificate: bool = True
    master_user: str = ""
    master_password_file: ConfigPath = None
    provisioning: Literal["passwd-file", "postgresql"] = "passwd-file"
    passwd_file: ConfigPath = None
    password_scheme: Literal["SHA512-CRYPT", "SHA256-CRYPT", "ARGON2ID", "BLF-CRYPT"] = "SHA512-CRYPT"
    postgresql_url: str = ""
    postgresql_table: str = "users"
    alias_map: ConfigPath = None
    # The copy engine: "dovecot" (doveadm dsync: old UIDs and UIDVALIDITY kept), "imap" (APPEND: new UIDs),
    # "auto": dovecot when doveadm_config is set and doveadm is on PATH, else imap.
    engine: Literal["auto", "imap", "dovecot"] = "auto"
    doveadm_config: ConfigPath = None
    # Split delivery: mail of accounts not yet switched over goes to old_smtp, written after "smtp:".
    transport_map: ConfigPath = None
    old_smtp: Stripped = Field(default="", description='the old server\'s SMTP next hop, e.g. "[old.example.com]:25"')
    postmap: Stripped = Field(default="", description='the postmap program run after each rewrite of transport_map, '
                                                      'e.g. "postmap"; "" = not run')

    @model_validator(mode="before")
    @classmethod
    def _ports(cls, data: object) -> object:
        return _with_standard_ports(data, "port", "port")

    @model_validator(mode="after")
    def _postgresql_has_a_url(self) -> TargetConfig:
        if self.provisioning == "postgresql" and not self.postgresql_url:
            raise _refusal(' = "postgresql" needs postgresql_url', "provisioning")
        return self

    @field_validator("old_smtp")
    @classmethod
    def _next_hop(cls, value: str) -> str:
        if value and not is_smtp_next_hop(value):
            raise _refusal(f' = {value!r} is not an SMTP next hop; write "[old.example.com]:25" '
                           '(a host name or IP address, in brackets for no MX lookup, then :port)')
        return value

    @model_validator(mode="after")
    def _transport_map_has_a_next_hop(self) -> TargetConfig:
        if self.transport_map is not None and not self.old_smtp:
            raise _refusal(' needs old_smtp, the old server\'s SMTP next hop, e.g. "[old.example.com]:25"',
                           "transport_map")
        return self


class ProxyConfig(_Section):
    imap: Endpoints = ()
    imaps: Endpoints = ()
    pop3: Endpoints = ()
    pop3s: Endpoints = ()
    tls_cert: ConfigPath = None
    tls_key: ConfigPath = None
    require_tls_for_login: bool = False
    # Connection limits: the proxy's own defaults (`ProxyLimits`), bounded here.
    max_connections: int = Field(default=ProxyLimits.max_connections, gt=0)
    max_connections_per_address: int = Field(default=ProxyLimits.max_connections_per_address, gt=0)
    login_timeout: float = Field(default=ProxyLimits.login_timeout, gt=0, description="seconds")
    send_timeout: float = Field(default=ProxyLimits.send_timeout, gt=0, description="seconds")
    relay_send_timeout: float = Field(default=ProxyLimits.relay_send_timeout, gt=0, description="seconds")

    @model_validator(mode="after")
    def _tls_listeners_have_a_certificate(self) -> ProxyConfig:
        if (self.imaps or self.pop3s) and not (self.tls_cert and self.tls_key):
            raise _refusal(" listeners need tls_cert and tls_key", "imaps/pop3s")
        return self


class MigrationConfig(_Section):
    migration_account: Folded = ""
    log_file: ConfigPath = None
    access_mode: Literal["username", "standard", "extended"] = "username"
    use_x_envelope_to: bool = True
    passwords_only: bool = False
    # Where users are served while their mail copies: old-server (passed through; a switch follows the copy),
    # notice (the migration_account mailbox) or refuse ("Migration in progress, try again later").
    while_copying: Literal["old-server", "notice", "refuse"] = DEFAULT_WHILE_COPYING
    post_migrate_script: ConfigPath = None
    post_migrate_timeout: float = Field(default=60.0, gt=0, description="seconds")
    # How the script gets the password: stdin (a line), env (MAILMIGRATOR_PASSWORD) or argv (visible in `ps`).
    post_migrate_password: PasswordHandover = "stdin"
    primary_domain: Folded = ""
    concurrency: int = Field(default=4, ge=1, description="accounts copied at the same time")
    connections_per_source_host: int = Field(default=8, ge=1)
    adaptive_connections: bool = True
    exclude_folders: Strings = ()
    max_message_size: int = Field(default=0, ge=0, description="bytes; 0 = no limit")
    # Move each account's Sieve scripts and the active one over ManageSieve; a server without it is recorded.
    sieve: bool = True
    domains: Domains = Field(default_factory=dict)
    # Several nodes on one store: who this node is, and how long its claim on an account lasts unrenewed.
    node_name: Stripped = Field(default="", description='default "hostname/first proxy listener"')
    lease_seconds: float = Field(default=DEFAULT_LEASE_SECONDS, ge=5,
                                 description="seconds a node's claim on an account lasts")


class AdminConfig(_Section):
    listen: Endpoints = ()
    password_file: ConfigPath = None
    tls_cert: ConfigPath = None
    tls_key: ConfigPath = None


class Config(_Section):
    """The whole file; each field is one section, and an absent or empty section is the field's default."""

    store: StoreConfig
    source: SourceConfig | None = None
    target: TargetConfig | None = None
    proxy: ProxyConfig = ProxyConfig()
    migration: MigrationConfig = MigrationConfig()
    # Without an [admin] table the console listens on loopback; a table without `listen` means no console.
    admin: AdminConfig = AdminConfig(listen=(Endpoint("127.0.0.1", 8025),))
    _path: Path = PrivateAttr(default_factory=lambda: default_config_path().absolute())

    @model_validator(mode="before")
    @classmethod
    def _absent_section_is_empty(cls, data: object) -> object:
        # [store]'s defaults depend on the file's directory, so it is validated even when absent.
        return {name: {} for name in cls.model_fields} | data if isinstance(data, dict) else data

    @field_validator("*", mode="before")
    @classmethod
    def _table(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, BaseModel):
            return value
        if not isinstance(value, dict):
            raise _refusal(" must be a table")
        field = cls.model_fields[info.field_name or ""]
        return value if value or field.is_required() else field.get_default()

    @field_validator("migration")
    @classmethod
    def _node_name(cls, migration: MigrationConfig, info: ValidationInfo) -> MigrationConfig:
        proxy = info.data.get("proxy")
        if migration.node_name or not isinstance(proxy, ProxyConfig):
            return migration
        return migration.model_copy(update={"node_name": default_node_name(proxy)})

    @model_validator(mode="after")
    def _remember_the_file(self, info: ValidationInfo) -> Config:
        if isinstance(info.context, _Origin):
            self._path = info.context.path
        return self

    @property
    def path(self) -> Path:
        return self._path

    @property
    def base_dir(self) -> Path:
        return self._path.parent

    def general_settings(self) -> dict[str, str | bool | dict[str, str]]:
        """The General tab as recorded on the run: no secrets, primitives only."""
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


def default_config_path() -> Path:
    return Path(os.environ.get("MAILMIGRATOR_CONFIG") or "mailmigrator.toml")


def default_node_name(proxy: ProxyConfig) -> str:
    """The host name, plus the first proxy listener so that two nodes on one host differ."""
    listeners = proxy.imap + proxy.imaps + proxy.pop3 + proxy.pop3s
    host = socket.gethostname()
    return f"{host}/{listeners[0]}" if listeners else host


def load_config(path: Path, *, allow_missing: bool = False) -> Config:
    """Read and check the configuration file at `path`.

    With `allow_missing`, a file that does not exist gives the defaults
    (an SQLite store beside where the file would be).
    """
    path = path.resolve() if path.exists() else Path(os.path.abspath(path))
    try:
        return Config.model_validate(_read_toml(path, allow_missing), context=_Origin(path))
    except ValidationError as e:
        raise _one_line(e, path) from None


def _read_toml(path: Path, allow_missing: bool) -> dict[str, Any]:
    if not path.exists():
        if not allow_missing:
            raise ConfigError(f"config file {path} does not exist; pass --config FILE or set MAILMIGRATOR_CONFIG")
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def _one_line(error: ValidationError, path: Path) -> ConfigError:
    """The first problem as `[section] key <what is wrong>`; a misspelt key is named before what it left missing."""
    problems = error.errors(include_url=False)
    problem = next((p for p in problems if p["type"] == "extra_forbidden"), problems[0])
    loc = [str(part) for part in problem["loc"]] + [str(k) for k in [problem.get("ctx", {}).get("key")] if k]
    if not loc:
        return ConfigError(f"config file {path}: {problem['msg']}")
    if problem["type"] == "extra_forbidden":
        if len(loc) == 1:
            return ConfigError(f"unknown section [{loc[0]}] in {path.name}; known: {', '.join(Config.model_fields)}")
        return ConfigError(f"unknown key [{loc[0]}] {loc[1]}; check its spelling against ops/mailmigrator.example.toml")
    field = _field(loc[0], loc[1]) if len(loc) > 1 else None
    where = f"[{loc[0]}] {loc[1]}" if len(loc) > 1 else f"[{loc[0]}]"
    if problem["type"] == "config" or field is None or not field.description:
        return ConfigError(where + _complaint(problem, field))
    return ConfigError(f"{where}{_complaint(problem, field)} ({field.description})")


_TYPE_COMPLAINTS = {
    "missing": " is missing",
    "string_type": " must be a string (in quotes)",
    "int_type": " must be a whole number",
    "float_type": " must be a number",
    "bool_type": " must be true or false",
    "model_type": " must be a table",
}


def _complaint(problem: ErrorDetails, field: FieldInfo | None) -> str:
    kind, ctx = problem["type"], problem.get("ctx", {})
    if kind in _TYPE_COMPLAINTS:
        return _TYPE_COMPLAINTS[kind]
    if kind == "config":
        return str(ctx["message"])
    if kind == "literal_error":
        choices = get_args(field.annotation) if field is not None else ()
        return f" = {problem['input']!r} is not one of: {', '.join(map(str, choices)) or ctx['expected']}"
    if kind == "greater_than":
        return " must be a positive number" if ctx["gt"] == 0 else f" must be more than {ctx['gt']}"
    if kind == "greater_than_equal":
        return f" must be at least {ctx['ge']}"
    if kind == "less_than_equal":
        return f" must be at most {ctx['le']}"
    return f": {problem['msg']}"


def _field(section: str, key: str) -> FieldInfo | None:
    """The schema's entry for `[section] key`, if there is one."""
    annotation = Config.model_fields[section].annotation if section in Config.model_fields else None
    models = [t for t in (annotation, *get_args(annotation)) if isinstance(t, type) and issubclass(t, BaseModel)]
    return models[0].model_fields.get(key) if models else None


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
