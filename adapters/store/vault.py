"""The credential vault: verified passwords kept encrypted, outside the event store, only as long as needed.

A finish sweep, a retry or a resume after a crash must log in to the old
server again. Without a source admin login, the user's own password is the
only way in, so it is kept here, AES-GCM encrypted with a key from a file of
mode 0600, bound to its login, and destroyed after the account's first
successful finish sweep.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mailmigrator.adapters.store.key_files import write_key_file
from mailmigrator.adapters.store.sql_tables import SqlTables, create_tables_racing, rowcount
from mailmigrator.domain.errors import ExplainedError


class VaultError(ExplainedError):
    """The vault's key cannot be used, or a stored credential does not decrypt."""


class WrongVaultKey(VaultError):
    """The key is not the one this store's vault was first sealed with (another node's key file)."""


# Sealed with the key by the first node that opens the vault; every later node must open it.
KEY_CHECK_LABEL = b"mailmigrator credential vault key check"


def load_or_create_key(path: Path) -> bytes:
    """The vault key from `path`, created (32 random bytes, mode 0600) when absent."""
    if not path.exists():
        try:
            write_key_file(path)
        except FileExistsError:
            pass  # another node wrote it a moment ago: use theirs
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise VaultError(f"credential key file {path} is readable by others; chmod 600 it")
    try:
        key = base64.b64decode(path.read_text().strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) not in (16, 24, 32):
        raise VaultError(f"credential key file {path} does not hold a base64 AES key; move it away to create a new one")
    return key


def read_key(path: Path) -> bytes:
    """The vault key from `path`, never creating it: `VaultError` when it is missing or unusable."""
    if not path.exists():
        raise VaultError(f"credential key file {path} does not exist")
    return load_or_create_key(path)


def opens_key_check(sealed: bytes, key: bytes) -> bool:
    """Whether `key` decrypts a vault's sealed key check."""
    try:
        AESGCM(key).decrypt(sealed[:12], sealed[12:], None)
    except InvalidTag:
        return False
    return True


class CredentialVault(SqlTables):
    """Encrypted passwords by login, in a table of their own beside the events."""

    _aead: AESGCM | None = None

    @classmethod
    def open(cls, factory: Any, key: bytes) -> CredentialVault:
        """The vault on the store's own database, sealing with `key`."""
        vault: CredentialVault = cls.on(factory)
        vault._aead = AESGCM(key)
        create_tables_racing(vault.create_table)
        vault.check_key()
        return vault

    def __repr__(self) -> str:
        return "CredentialVault(<key hidden>)"

    @classmethod
    def sealed_key_check(cls, factory: Any) -> bytes | None:
        """The store's sealed key check, reading only; None when no node has sealed one yet."""
        vault: CredentialVault = cls.on(factory)
        try:
            with vault._cursor(commit=False) as c:
                c.execute(vault.sql("SELECT sealed FROM {p}mm_vault_key WHERE label = %s"),
                          (KEY_CHECK_LABEL.decode(),))
                row = c.fetchone()
        except Exception:  # noqa: BLE001 - no vault table yet
            return None
        return None if row is None else bytes(row["sealed"])

    def create_table(self) -> None:
        with self._cursor(commit=True) as c:
            c.execute(self.sql(
                "CREATE TABLE IF NOT EXISTS {p}mm_vault (login TEXT PRIMARY KEY, sealed " + self.blob + " NOT NULL)"
            ))
            c.execute(self.sql(
                "CREATE TABLE IF NOT EXISTS {p}mm_vault_key (label TEXT PRIMARY KEY, sealed " + self.blob + " NOT NULL)"
            ))

    def check_key(self) -> None:
        """Record the key check when the vault has none; `WrongVaultKey` when it was sealed with another key."""
        with self._cursor(commit=True) as c:
            c.execute(self.sql("SELECT sealed FROM {p}mm_vault_key WHERE label = %s"), (KEY_CHECK_LABEL.decode(),))
            row = c.fetchone()
        if row is None:
            self._refuse_if_credentials_do_not_open()
            nonce = os.urandom(12)
            with self._cursor(commit=True) as c:
                # Of two nodes starting at once, the first insert stands; both then compare against it.
                c.execute(self.sql("INSERT INTO {p}mm_vault_key (label, sealed) VALUES (%s, %s) "
                                   "ON CONFLICT (label) DO NOTHING"),
                          (KEY_CHECK_LABEL.decode(), nonce + self._cipher().encrypt(nonce, KEY_CHECK_LABEL, None)))
            return self.check_key()
        sealed = bytes(row["sealed"])
        try:
            self._cipher().decrypt(sealed[:12], sealed[12:], None)
        except InvalidTag:
            raise WrongVaultKey("is not the key this store's credential vault was sealed with") from None

    def _refuse_if_credentials_do_not_open(self) -> None:
        """A vault with credentials but no key check yet: its first credential tells whether this is its key."""
        with self._cursor(commit=False) as c:
            c.execute(self.sql("SELECT login, sealed FROM {p}mm_vault ORDER BY login LIMIT 1"))
            row = c.fetchone()
        if row is not None:
            sealed = bytes(row["sealed"])
            try:
                self._cipher().decrypt(sealed[:12], sealed[12:], row["login"].encode())
            except InvalidTag:
                raise WrongVaultKey("is not the key this store's credential vault was sealed with") from None

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            raise VaultError("the credential vault has no key")
        return self._aead

    def put(self, login: str, password: str) -> None:
        """Keep (or replace) the password of `login`."""
        nonce = os.urandom(12)
        sealed = nonce + self._cipher().encrypt(nonce, password.encode(), login.encode())
        with self._cursor(commit=True) as c:
            c.execute(
                self.sql("INSERT INTO {p}mm_vault (login, sealed) VALUES (%s, %s) "
                         "ON CONFLICT (login) DO UPDATE SET sealed = excluded.sealed"),
                (login, sealed),
            )

    def get(self, login: str) -> str | None:
        """The kept password of `login`, or None when there is none."""
        with self._cursor(commit=False) as c:
            c.execute(self.sql("SELECT sealed FROM {p}mm_vault WHERE login = %s"), (login,))
            row = c.fetchone()
        if row is None:
            return None
        sealed = bytes(row["sealed"])
        try:
            return self._cipher().decrypt(sealed[:12], sealed[12:], login.encode()).decode()
        except InvalidTag:
            raise VaultError(f"the stored credential of {login} does not decrypt with this key") from None

    def destroy(self, login: str) -> bool:
        """Forget the password of `login`; True when there was one."""
        with self._cursor(commit=True) as c:
            c.execute(self.sql("DELETE FROM {p}mm_vault WHERE login = %s"), (login,))
            return rowcount(c) == 1

    def logins(self) -> list[str]:
        with self._cursor(commit=False) as c:
            c.execute(self.sql("SELECT login FROM {p}mm_vault ORDER BY login"))
            return [row["login"] for row in c.fetchall()]
