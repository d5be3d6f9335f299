"""Creating accounts on the new server: a Dovecot passwd-file, or a PostgreSQL users table.

Both store the password as a Dovecot scheme-prefixed hash (`{SHA512-CRYPT}$6$...`),
never in clear. Hashes come from libpass (the maintained passlib fork).
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import psycopg
from psycopg import sql
from passlib.hash import argon2, bcrypt, sha256_crypt, sha512_crypt

from mailmigrator.domain.errors import DomainError


class ProvisioningError(DomainError):
    """The new server's account could not be created or changed."""


# Dovecot re-reads a changed passwd-file at most once a second (it stats the
# file once per ioloop second), so a change is certain to be seen after this.
PASSWD_FILE_SETTLE_SECONDS = 1.1

# The password field of an account prepared ahead of its owner's first login (a pre-copy):
# crypt(3) never returns "!" for any password, so no password opens it; the master user still can.
NO_PASSWORD_FIELD = "{CRYPT}!"


class Provisioner(Protocol):
    """Creates accounts on the new server and sets their passwords."""

    name: str
    # Seconds after a change before the new server is sure to accept the login.
    settle_seconds: float

    def create(self, login: str, password: str) -> None:
        """Create `login` with `password`; `ProvisioningError` when it already exists."""
        ...

    def exists(self, login: str) -> bool: ...

    def set_password(self, login: str, password: str) -> None:
        """Set the password of an existing account; `ProvisioningError` when missing."""
        ...

    def prepare(self, login: str) -> bool:
        """Create `login` with a password field no password matches; False when it already exists."""
        ...


def dovecot_hash(password: str, scheme: str) -> str:
    """The Dovecot password field for `password` in `scheme` (`{SCHEME}` prefix included)."""
    if scheme == "SHA512-CRYPT":
        # rounds=5000 is the crypt(3) default Dovecot itself writes; libpass's
        # default (656,000) would add half a second to every first login.
        digest = sha512_crypt.using(rounds=5000).hash(password)
    elif scheme == "SHA256-CRYPT":
        digest = sha256_crypt.using(rounds=5000).hash(password)
    elif scheme == "BLF-CRYPT":
        digest = bcrypt.using(ident="2y").hash(password)
    elif scheme == "ARGON2ID":
        digest = argon2.using(type="ID").hash(password)
    else:
        raise ProvisioningError(f"[target] password_scheme {scheme!r} is not supported")
    return "{" + scheme + "}" + digest


def _check_login(login: str) -> None:
    if not login or any(c in login for c in ":\r\n\x00") or login != login.strip():
        raise ProvisioningError(f"login {login!r} cannot be stored in a passwd-file")


class PasswdFileProvisioner:
    """Lines `login:{SCHEME}hash::::::` in a Dovecot passwd-file.

    Every change takes an exclusive `fcntl` lock on `FILE.lock`, reads the
    file, writes a complete new copy beside it and renames it into place, so
    Dovecot and concurrent writers only ever see a whole file.
    """

    name = "passwd-file"
    settle_seconds = PASSWD_FILE_SETTLE_SECONDS

    def __init__(self, path: Path, scheme: str = "SHA512-CRYPT") -> None:
        self.path = path
        self.scheme = scheme
        self.lock_path = path.with_name(path.name + ".lock")

    def create(self, login: str, password: str) -> None:
        if not self._add(login, dovecot_hash(password, self.scheme)):
            raise ProvisioningError(f"{login} already exists in {self.path}")

    def prepare(self, login: str) -> bool:
        return self._add(login, NO_PASSWORD_FIELD)

    def _add(self, login: str, field: str) -> bool:
        _check_login(login)
        with self._locked():
            lines = self._read()
            if any(_login_of(existing) == login for existing in lines):
                return False
            self._write(lines + [f"{login}:{field}::::::\n"])
        return True

    def exists(self, login: str) -> bool:
        return any(_login_of(line) == login for line in self._read())

    def set_password(self, login: str, password: str) -> None:
        _check_login(login)
        field = dovecot_hash(password, self.scheme)
        with self._locked():
            lines = self._read()
            found = False
            out = []
            for line in lines:
                if _login_of(line) == login:
                    parts = line.rstrip("\n").split(":")
                    parts[1] = field
                    line = ":".join(parts) + "\n"
                    found = True
                out.append(line)
            if not found:
                raise ProvisioningError(f"{login} does not exist in {self.path}")
            self._write(out)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as e:
            raise ProvisioningError(f"cannot read {self.path}: {e.strerror}") from None
        # Split on "\n" only, as Dovecot reads the file: str.splitlines() would also split
        # on characters such as U+0085 or U+2028 inside a line and rewrite it as two.
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        return [line + "\n" for line in lines]

    def _write(self, lines: list[str]) -> None:
        try:
            old = self.path.stat()
            mode, old_mtime = old.st_mode & 0o7777, old.st_mtime
        except FileNotFoundError:
            mode, old_mtime = 0o600, 0.0
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(lines))
                f.flush()
                os.fsync(f.fileno())
            # Dovecot notices passwd-file changes by mtime (whole seconds) and
            # size; two writes within one second must still move the mtime.
            mtime = max(time.time(), int(old_mtime) + 1)
            os.utime(tmp, (mtime, mtime))
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ProvisioningError(f"cannot write {self.path}: {e.strerror}") from None


def _login_of(line: str) -> str:
    return line.split(":", 1)[0]


_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


class PostgresUsersProvisioner:
    """Rows (login text primary key, password text, domain text) in a PostgreSQL table."""

    name = "postgresql"
    settle_seconds = 0.0

    def __init__(self, url: str, table: str = "users", scheme: str = "SHA512-CRYPT") -> None:
        if not _TABLE_NAME.match(table):
            raise ProvisioningError(f"[target] postgresql_table {table!r} is not a table name (letters, digits, _)")
        self.url = url
        self.scheme = scheme
        self.table = sql.Identifier(*table.split("."))

    def ensure_table(self) -> None:
        """Create the users table when it does not exist yet."""
        self._execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (login text PRIMARY KEY, password text NOT NULL, domain text NOT NULL)"
            ).format(self.table)
        )

    def create(self, login: str, password: str) -> None:
        if not self._insert(login, dovecot_hash(password, self.scheme)):
            raise ProvisioningError(f"{login} already exists in the users table")

    def prepare(self, login: str) -> bool:
        return self._insert(login, NO_PASSWORD_FIELD)

    def _insert(self, login: str, field: str) -> bool:
        row = self._execute(
            sql.SQL(
                "INSERT INTO {} (login, password, domain) VALUES (%s, %s, %s) ON CONFLICT (login) DO NOTHING RETURNING login"
            ).format(self.table),
            (login, field, login.rpartition("@")[2]),
        )
        return row is not None

    def exists(self, login: str) -> bool:
        return self._execute(sql.SQL("SELECT login FROM {} WHERE login = %s").format(self.table), (login,)) is not None

    def set_password(self, login: str, password: str) -> None:
        row = self._execute(
            sql.SQL("UPDATE {} SET password = %s WHERE login = %s RETURNING login").format(self.table),
            (dovecot_hash(password, self.scheme), login),
        )
        if row is None:
            raise ProvisioningError(f"{login} does not exist in the users table")

    def _execute(self, query: sql.Composed, params: tuple[str, ...] = ()) -> tuple[object, ...] | None:
        try:
            with psycopg.connect(self.url, connect_timeout=5, autocommit=True) as conn:
                cursor = conn.execute(query, params)
                return cursor.fetchone() if cursor.description else None
        except psycopg.Error as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ProvisioningError(f"users table: {first}") from None
