"""The credential vault on SQLite and PostgreSQL: sealed at rest, bound to its login, destroyable."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import pytest

from mailmigrator.adapters.store.key_files import write_key_file
from mailmigrator.adapters.store.event_store import parse_store_url, store_environment
from mailmigrator.adapters.store.vault import CredentialVault, VaultError, WrongVaultKey, load_or_create_key
from mailmigrator.domain.application import MigrationService

PASSWORD = "correct horse 'battery' \"staple\" ünïcode"


def test_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    key_file = tmp_path / "credentials.key"
    key = load_or_create_key(key_file)
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(key) == 32
    assert load_or_create_key(key_file) == key
    key_file.chmod(0o644)
    with pytest.raises(VaultError, match="readable by others"):
        load_or_create_key(key_file)


def test_vault_seals_and_destroys(tmp_path: Path, store_url: str) -> None:
    app = MigrationService(env=store_environment(parse_store_url(store_url, tmp_path)))
    key = load_or_create_key(tmp_path / "credentials.key")
    vault = CredentialVault.open(app.factory, key)
    vault.put("amy@example.com", PASSWORD)
    vault.put("bo@example.com", "other")
    assert vault.get("amy@example.com") == PASSWORD
    assert vault.logins() == ["amy@example.com", "bo@example.com"]
    assert "horse" not in repr(vault)

    # Another node's key is refused when the vault opens, before any credential is read.
    with pytest.raises(WrongVaultKey, match="not the key this store's credential vault was sealed with"):
        CredentialVault.open(app.factory, load_or_create_key(tmp_path / "other.key"))
    assert CredentialVault.open(app.factory, key).get("bo@example.com") == "other"
    # One damaged credential is an error of that login only.
    with vault.datastore.transaction(commit=True) as c:
        c.execute(vault.sql("UPDATE {p}mm_vault SET sealed = %s WHERE login = %s"), (b"\0" * 40, "amy@example.com"))
    with pytest.raises(VaultError, match="does not decrypt") as info:
        vault.get("amy@example.com")
    assert "horse" not in str(info.value)
    assert vault.get("bo@example.com") == "other"
    vault.put("amy@example.com", PASSWORD)

    assert vault.destroy("amy@example.com") is True
    assert vault.get("amy@example.com") is None
    assert vault.destroy("amy@example.com") is False
    if store_url.startswith("sqlite"):
        raw = (tmp_path / "events.sqlite").read_bytes()
        assert b"horse" not in raw and b"other" not in raw
        with sqlite3.connect(tmp_path / "events.sqlite") as conn:
            (sealed,) = conn.execute("SELECT sealed FROM mm_vault").fetchone()
        assert b"other" not in sealed
    app.close()


def test_a_key_file_is_never_overwritten_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    key = tmp_path / "credentials.key"
    write_key_file(key)
    first = key.read_bytes()
    with pytest.raises(FileExistsError):
        write_key_file(key)
    assert key.read_bytes() == first and len(base64.b64decode(first.strip())) == 32
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["credentials.key"]
