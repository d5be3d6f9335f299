"""Provisioning adapters: the passwd-file under concurrent writers, and the PostgreSQL users table."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import psycopg
import pytest
from testbed import DovecotServer
from passlib.hash import sha512_crypt

from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from mailmigrator.adapters.accounts.provisioning import (
    NO_PASSWORD_FIELD,
    PASSWD_FILE_SETTLE_SECONDS,
    PasswdFileProvisioner,
    PostgresUsersProvisioner,
    ProvisioningError,
)


def _create_many(path: str, start: int) -> None:
    provisioner = PasswdFileProvisioner(Path(path))
    for i in range(start, start + 15):
        provisioner.create(f"user{i}@example.com", f"pw{i}")


def test_concurrent_processes_never_corrupt_the_passwd_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("existing@example.com:{PLAIN}x::::::\n")
    path.chmod(0o640)
    procs = [multiprocessing.Process(target=_create_many, args=(str(path), n * 100)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    lines = path.read_text().splitlines()
    assert len(lines) == 61 and len({l.split(":")[0] for l in lines}) == 61
    assert all(l.endswith("::::::") and len(l.split(":")) == 8 for l in lines)
    assert path.stat().st_mode & 0o777 == 0o640  # mode kept across the rename
    field = next(l for l in lines if l.startswith("user100@")).split(":")[1]
    assert field.startswith("{SHA512-CRYPT}") and sha512_crypt.verify("pw100", field.removeprefix("{SHA512-CRYPT}"))


def test_passwd_file_create_twice_and_set_password(tmp_path: Path) -> None:
    provisioner = PasswdFileProvisioner(tmp_path / "users", "SHA256-CRYPT")
    provisioner.create("a@example.com", "one")
    with pytest.raises(ProvisioningError):
        provisioner.create("a@example.com", "two")
    provisioner.set_password("a@example.com", "two")
    assert provisioner.exists("a@example.com") and not provisioner.exists("b@example.com")
    assert "{SHA256-CRYPT}$5$" in (tmp_path / "users").read_text()
    assert "two" not in (tmp_path / "users").read_text()
    with pytest.raises(ProvisioningError):
        provisioner.set_password("b@example.com", "x")
    with pytest.raises(ProvisioningError):
        provisioner.create("evil:0:0@example.com", "x")


@pytest.mark.postgres
def test_postgres_users_table(pg_database: str) -> None:
    url = f"postgresql://postgres@127.0.0.1:5432/{pg_database}"
    provisioner = PostgresUsersProvisioner(url, "users")
    provisioner.ensure_table()
    provisioner.create("a@example.com", "secret")
    with pytest.raises(ProvisioningError):
        provisioner.create("a@example.com", "other")
    provisioner.set_password("a@example.com", "changed")
    assert provisioner.exists("a@example.com") and not provisioner.exists("b@example.com")
    with psycopg.connect(url) as conn:
        login, password, domain = conn.execute("SELECT login, password, domain FROM users").fetchone()
    assert (login, domain) == ("a@example.com", "example.com")
    assert sha512_crypt.verify("changed", password.removeprefix("{SHA512-CRYPT}"))
    with pytest.raises(ProvisioningError):
        PostgresUsersProvisioner(url, "users; drop table x")
    assert provisioner.prepare("b@example.com") and not provisioner.prepare("a@example.com")
    with psycopg.connect(url) as conn:
        rows = dict(conn.execute("SELECT login, password FROM users").fetchall())
    assert rows["b@example.com"] == NO_PASSWORD_FIELD
    assert sha512_crypt.verify("changed", rows["a@example.com"].removeprefix("{SHA512-CRYPT}"))  # left alone


def test_passwd_file_lines_are_split_on_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "users"
    foreign = "other@example.com:{PLAIN}x:::comment with \x85 and \u2028 inside\n\n"
    path.write_text(foreign, encoding="utf-8")
    PasswdFileProvisioner(path, "SHA256-CRYPT").create("a@example.com", "one")
    text = path.read_text(encoding="utf-8")
    assert text.startswith(foreign)
    assert text.count("\n") == 3



def test_a_prepared_account_refuses_every_password_and_lets_the_master_user_in(new_server: DovecotServer) -> None:
    provisioner = PasswdFileProvisioner(Path(new_server.passwd_file))
    assert provisioner.prepare("early@example.com")
    assert not provisioner.prepare("early@example.com")  # already there: left alone
    assert provisioner.exists("early@example.com")
    field = Path(new_server.passwd_file).read_text().split("early@example.com:", 1)[1].split(":", 1)[0]
    time.sleep(PASSWD_FILE_SETTLE_SECONDS)
    with new_server.imap("early@example.com") as client:  # the master user
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
    for password in ("", "!", field, "{CRYPT}!", "*", "x"):
        client = IMAPClient(new_server.host, port=new_server.imap_port, ssl=False)
        with pytest.raises(LoginError):
            client.login("early@example.com", password)
        client.logout()
    provisioner.set_password("early@example.com", "now-set")
    time.sleep(PASSWD_FILE_SETTLE_SECONDS)
    with new_server.imap("early@example.com", "now-set") as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
