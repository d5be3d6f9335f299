"""Event store wiring: a `[store] url` becomes the eventsourcing library's own settings."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mailmigrator.adapters.store.key_files import write_key_file
from mailmigrator.domain.errors import DomainError


class StoreError(DomainError):
    """The event store cannot be used as configured."""


class StoreSettingError(StoreError):
    """The `[store]` settings themselves are wrong (bad url, bad key file)."""


@dataclass(frozen=True)
class StoreLocation:
    """Where events live: an SQLite file, or a PostgreSQL database."""

    kind: str  # "sqlite" | "postgresql"
    sqlite_path: Path | None = None
    host: str = ""
    port: int = 5432
    user: str = ""
    password: str = ""
    dbname: str = ""
    schema: str = ""

    def describe(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite file {self.sqlite_path}"
        return f"postgresql database {self.dbname!r} on {self.host}:{self.port}"


def parse_store_url(url: str, base_dir: Path) -> StoreLocation:
    """Parse `sqlite:///path`, `sqlite:relative/path` or `postgresql://user@host:port/db?schema=s`."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        raw = unquote(parts.path if not parts.netloc else parts.netloc + parts.path)
        if not raw:
            raise StoreSettingError(f"[store] url {url!r} names no file; write sqlite:///path/to/events.sqlite")
        if raw.startswith("//"):
            raw = "/" + raw.lstrip("/")
        path = Path(raw)
        if not path.is_absolute():
            path = base_dir / path
        return StoreLocation(kind="sqlite", sqlite_path=path)
    if parts.scheme in ("postgresql", "postgres"):
        dbname = unquote(parts.path.lstrip("/"))
        if not dbname or not parts.hostname:
            raise StoreSettingError(
                "[store] url must name host and database, e.g. postgresql://user@host:5432/db"
            )
        schema = ""
        for pair in parts.query.split("&") if parts.query else []:
            key, _, value = pair.partition("=")
            if key != "schema":
                raise StoreSettingError(f"[store] url has an unknown parameter {key!r}; only 'schema' is accepted")
            schema = unquote(value)
        return StoreLocation(
            kind="postgresql",
            host=parts.hostname,
            port=parts.port or 5432,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            dbname=dbname,
            schema=schema,
        )
    raise StoreSettingError(
        f"[store] url {url!r} has an unknown scheme; use sqlite:///FILE or postgresql://USER@HOST/DB"
    )


def read_key_file(path: Path) -> str:
    """Read an AES key (base64 of 16, 24 or 32 bytes) from a file only its owner can read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as e:
        raise StoreSettingError(f"[store] encryption_key_file {path}: {e.strerror}; create it with `mailmigrator keygen`") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StoreSettingError(f"[store] encryption_key_file {path} is readable by others; chmod 600 it")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) not in (16, 24, 32):
        raise StoreSettingError(
            f"[store] encryption_key_file {path} does not hold a base64 AES key of 16, 24 or 32 bytes"
        )
    return text


def create_key_file(path: Path) -> None:
    """Write a new random AES-256 key, mode 0600; refuses to overwrite an existing key."""
    write_key_file(path)


def store_environment(
    location: StoreLocation, cipher_key: str | None = None, lock_timeout: float = 10.0
) -> dict[str, str]:
    """The eventsourcing settings for this location."""
    env: dict[str, str] = {}
    if location.kind == "sqlite":
        env["PERSISTENCE_MODULE"] = "eventsourcing.sqlite"
        env["SQLITE_DBNAME"] = str(location.sqlite_path)
        env["SQLITE_LOCK_TIMEOUT"] = str(int(max(1, lock_timeout)))
    else:
        env.update(
            PERSISTENCE_MODULE="eventsourcing.postgres",
            POSTGRES_DBNAME=location.dbname,
            POSTGRES_HOST=location.host,
            POSTGRES_PORT=str(location.port),
            POSTGRES_USER=location.user,
            POSTGRES_PASSWORD=location.password,
            POSTGRES_CONNECT_TIMEOUT="5",
            POSTGRES_POOL_SIZE="4",
            POSTGRES_MAX_OVERFLOW="8",
        )
        if location.schema:
            env["POSTGRES_SCHEMA"] = location.schema
    if cipher_key:
        env["CIPHER_TOPIC"] = "eventsourcing.cryptography:AESCipher"
        env["CIPHER_KEY"] = cipher_key
    return env


def check_store(location: StoreLocation, *, must_exist: bool, lock_timeout: float = 10.0) -> bool:
    """Check the store can be opened; returns False when an SQLite file does not exist yet.

    Raises `StoreError` with one line naming the cause otherwise.
    """
    if location.kind == "sqlite":
        path = location.sqlite_path
        assert path is not None
        if not path.exists():
            if must_exist:
                raise StoreError(f"store file {path} does not exist; check [store] url")
            if not path.parent.is_dir():
                raise StoreError(f"store directory {path.parent} does not exist; create it or fix [store] url")
            return False
        if not os.access(path, os.R_OK):
            raise StoreError(f"store file {path} is not readable by this user")
        try:
            with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=lock_timeout) as conn:
                conn.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError as e:
            if "locked" in str(e):
                raise StoreError(f"store file {path} is locked by another process; try again") from None
            raise StoreError(f"store file {path} cannot be opened: {e}") from None
        except sqlite3.DatabaseError as e:
            raise StoreError(
                f"store file {path} is not an SQLite database ({e}); restore it from backup"
            ) from None
        return True
    # Imported here: SQLite users should not pay psycopg's import time on every command.
    import psycopg

    try:
        with psycopg.connect(
            host=location.host,
            port=location.port,
            user=location.user,
            password=location.password or None,
            dbname=location.dbname,
            connect_timeout=5,
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StoreError(f"cannot reach {location.describe()}: {first}") from None
    return True
