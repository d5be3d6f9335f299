"""The Dovecot test bed really serves IMAP/POP3 over plain, STARTTLS and implicit TLS."""

from __future__ import annotations

import imaplib
import poplib
import pwd
import socket
import ssl
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
import trustme
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

import testbed
from testbed import (
    MAIL_USER,
    DovecotServer,
    SeedMessage,
    TestbedError,
    append_messages,
    create_folder,
    mailbox_snapshot,
    make_message,
    make_new_server,
    open_imap,
    password_hash,
    seed_bulk,
    seed_standard_mailbox,
)

PASSWORD = "s3cret-Passwort"


def _pop3_message(conn: poplib.POP3, number: int) -> bytes:
    _, lines, _ = conn.retr(number)
    return b"\r\n".join(lines) + b"\r\n"


def test_old_plain_imap_login_offers_starttls_and_full_capabilities(
    old_server: DovecotServer, unique_login: str
) -> None:
    old_server.add_user(unique_login, PASSWORD)
    with IMAPClient(old_server.host, old_server.imap_port, ssl=False, timeout=10) as client:
        assert b"STARTTLS" in client.capabilities()
        with pytest.raises(LoginError):
            client.login(unique_login, "wrong")
        client.login(unique_login, PASSWORD)
        capabilities = set(client.capabilities())
        assert {b"LITERAL+", b"MULTIAPPEND", b"SPECIAL-USE", b"CONDSTORE", b"UIDPLUS", b"MOVE"} <= capabilities
        assert client.namespace().personal == (("INBOX.", "."),)


def test_old_starttls_and_imaps_verify_against_the_ca(old_server: DovecotServer, unique_login: str) -> None:
    old_server.add_user(unique_login, PASSWORD)
    context = old_server.ssl_context()
    for tls, port in (("starttls", old_server.imap_port), ("implicit", old_server.imaps_port)):
        with open_imap(old_server.host, port, unique_login, PASSWORD, tls=tls, ssl_context=context) as client:
            sock = client.socket()
            assert isinstance(sock, ssl.SSLSocket)
            assert sock.version() in ("TLSv1.2", "TLSv1.3")
            certificate = sock.getpeercert()
            assert certificate is not None and ("IP Address", "127.0.0.1") in certificate["subjectAltName"]
            assert client.select_folder("INBOX")[b"EXISTS"] == 0


def test_clients_reject_the_certificate_without_the_ca(old_server: DovecotServer) -> None:
    untrusting = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        IMAPClient(old_server.host, old_server.imaps_port, ssl=True, ssl_context=untrusting, timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):
        poplib.POP3_SSL(old_server.host, old_server.pop3s_port, context=untrusting, timeout=10)
    with socket.create_connection((old_server.host, old_server.imaps_port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            old_server.ssl_context().wrap_socket(raw, server_hostname="mail.example.org")


def test_pop3_with_stls_and_pop3s(old_server: DovecotServer, unique_login: str) -> None:
    old_server.add_user(unique_login, PASSWORD)
    messages = [make_message(f"pop-{n}", size=2048 + n) for n in range(2)]
    with old_server.imap(unique_login, PASSWORD) as client:
        for raw in messages:
            client.append("INBOX", raw)

    context = old_server.ssl_context()
    plain = poplib.POP3(old_server.host, old_server.pop3_port, timeout=10)
    try:
        assert "STLS" in plain.capa()
        plain.stls(context=context)
        assert isinstance(plain.sock, ssl.SSLSocket)
        plain.user(unique_login)
        plain.pass_(PASSWORD)
        assert plain.stat() == (2, sum(len(raw) for raw in messages))
        assert _pop3_message(plain, 1) == messages[0]
    finally:
        plain.quit()

    implicit = poplib.POP3_SSL(old_server.host, old_server.pop3s_port, context=context, timeout=10)
    try:
        implicit.user(unique_login)
        with pytest.raises(poplib.error_proto):
            implicit.pass_("wrong")
    finally:
        implicit.close()
    implicit = poplib.POP3_SSL(old_server.host, old_server.pop3s_port, context=context, timeout=10)
    try:
        implicit.user(unique_login)
        implicit.pass_(PASSWORD)
        assert _pop3_message(implicit, 2) == messages[1]
        assert len(implicit.uidl()[1]) == 2
    finally:
        implicit.quit()


def test_new_master_login_for_user_appended_to_passwd_file_after_start(
    new_server: DovecotServer, unique_login: str
) -> None:
    assert new_server.pid is not None
    assert new_server.master_user and new_server.master_password
    with pytest.raises(LoginError):
        new_server.imap(unique_login)

    # Written the way the service under test writes it: appended in place.
    with Path(new_server.passwd_file).open("a") as passwd:
        passwd.write(f"{unique_login}:{password_hash(PASSWORD)}::::::\n")
    new_server.wait_for_user(unique_login)  # Dovecot re-stats the file at most once a second

    with open_imap(
        new_server.host, new_server.imap_port, unique_login, new_server.master_password,
        tls="starttls", ssl_context=new_server.ssl_context(), master=new_server.master_user,
    ) as client:
        assert client.namespace().personal == (("", "/"),)
        create_folder(client, "Archiv/2024")
    with new_server.imap(unique_login, PASSWORD) as client:
        names = {name for _, _, name in client.list_folders()}
        assert {"INBOX", "Archiv/2024", "Sent", "Drafts", "Trash", "Junk", "Archive"} <= names
    with pytest.raises(LoginError):
        open_imap(new_server.host, new_server.imap_port, unique_login, "wrong", master=new_server.master_user)


def test_old_admin_logs_in_as_user_by_separator_and_by_sasl_authzid(
    old_server: DovecotServer, unique_login: str
) -> None:
    old_server.add_user(unique_login, PASSWORD)
    with old_server.imap(unique_login, PASSWORD) as client:
        create_folder(client, "Privat")
    assert old_server.master_user == "admin"

    with old_server.imap(unique_login) as client:
        assert "INBOX.Privat" in {name for _, _, name in client.list_folders()}

    with IMAPClient(old_server.host, old_server.imap_port, ssl=False, timeout=10) as client:
        client.plain_login(old_server.master_user, old_server.master_password, authorization_identity=unique_login)
        assert "INBOX.Privat" in {name for _, _, name in client.list_folders()}

    with IMAPClient(old_server.host, old_server.imap_port, ssl=False, timeout=10) as client:
        with pytest.raises(LoginError):
            client.plain_login(old_server.master_user, "wrong", authorization_identity=unique_login)


def test_add_user_password_change_is_seen_immediately(old_server: DovecotServer, unique_login: str) -> None:
    old_server.add_user(unique_login, "first-password")
    open_imap(old_server.host, old_server.imap_port, unique_login, "first-password").logout()
    # Same hash length, same second: only the mtime bump makes Dovecot re-read.
    old_server.add_user(unique_login, "other-password")
    with pytest.raises(LoginError):
        open_imap(old_server.host, old_server.imap_port, unique_login, "first-password")
    open_imap(old_server.host, old_server.imap_port, unique_login, "other-password").logout()


def test_seeded_standard_mailbox_reads_back_identically(old_server: DovecotServer, unique_login: str) -> None:
    old_server.add_user(unique_login, PASSWORD)
    expected = seed_standard_mailbox(old_server, unique_login, PASSWORD)

    snapshot = mailbox_snapshot(
        old_server.host, old_server.imap_port, unique_login, PASSWORD,
        tls="starttls", ssl_context=old_server.ssl_context(),
    )
    assert snapshot == expected
    assert old_server.snapshot(unique_login) == expected  # through the admin master user

    assert {"Entwürfe/Ärger", "Projekte/Alpha/Tief", "Leer", "Junk"} <= set(snapshot.folders)
    assert snapshot.folders["Leer"] == [] and "Leer" not in snapshot.subscribed
    assert snapshot.special_use["\\Sent"] == "Sent"
    inbox = snapshot.folders["INBOX"]
    assert len(inbox) == 9
    assert {"\\Seen", "$Forwarded"} in [set(record.flags) for record in inbox]
    assert inbox[1].internaldate == datetime(2023, 3, 2, 8, 15, 30, tzinfo=timezone.utc)
    assert "INBOX.Entwürfe.Ärger" in old_server.doveadm("mailbox", "list", "-u", unique_login).splitlines()

    with old_server.imap(unique_login, PASSWORD) as client:
        client.select_folder("INBOX")
        client.add_flags(client.search("ALL")[:1], [b"\\Flagged"])
    changed = old_server.snapshot(unique_login, PASSWORD)
    assert changed != expected
    assert "\\Flagged" in changed.folders["INBOX"][0].flags


def test_canonical_snapshots_compare_across_separators(
    old_server: DovecotServer, new_server: DovecotServer, fresh_login: Callable[[], str]
) -> None:
    old_login, new_login = fresh_login(), fresh_login()
    old_server.add_user(old_login, PASSWORD)
    new_server.add_user(new_login, PASSWORD)
    old_expected = seed_standard_mailbox(old_server, old_login, PASSWORD)
    new_expected = seed_standard_mailbox(new_server, new_login)  # through the master user
    assert old_expected == new_expected
    assert new_server.snapshot(new_login) == old_server.snapshot(old_login)


def test_seed_bulk_multiappends_with_flags_and_dates(new_server: DovecotServer, unique_login: str) -> None:
    new_server.add_user(unique_login, PASSWORD)
    messages = [
        SeedMessage(
            make_message(n, message_id=n % 7 != 0),
            datetime(2022, 1, 1 + n % 28, n % 24, tzinfo=timezone.utc),
            ("\\Seen",) if n % 2 else ("$Forwarded",),
        )
        for n in range(600)
    ]
    assert seed_bulk(new_server, unique_login, "Bulk/Import", messages, batch_size=250) == 600
    snapshot = new_server.snapshot(unique_login)
    assert snapshot.folders["Bulk/Import"] == [message.record() for message in messages]
    assert "Bulk/Import" in snapshot.subscribed


def test_make_message_is_deterministic_and_sized() -> None:
    first = make_message(42, to=("x@example.com", "y@example.com"), headers={"X-Test": "1"}, size=5000)
    assert first == make_message(42, to=("x@example.com", "y@example.com"), headers={"X-Test": "1"}, size=5000)
    assert len(first) == 5000
    assert b"\r\nTo: x@example.com, y@example.com\r\n" in first and b"\r\nX-Test: 1\r\n" in first
    assert b"\nMessage-ID: <" in first
    assert b"Message-ID" not in make_message(42, message_id=False)
    assert make_message(42) != make_message(43)
    assert b"=?utf-8?" in make_message(1, subject="Grüße")
    with pytest.raises(ValueError):
        make_message(1, size=10)


def test_doveadm_runs_against_the_instance_with_an_unprivileged_mail_user(
    old_server: DovecotServer, unique_login: str
) -> None:
    old_server.add_user(unique_login, PASSWORD)
    fields = dict(line.split(None, 1) for line in old_server.doveadm("user", unique_login).splitlines()[1:])
    assert int(fields["uid"]) == pwd.getpwnam(MAIL_USER).pw_uid != 0
    with open_imap(old_server.host, old_server.imap_port, unique_login, PASSWORD) as client:
        message = SeedMessage(make_message("doveadm"), datetime(2020, 5, 5, tzinfo=timezone.utc))
        append_messages(client, "INBOX", [message])
    status = old_server.doveadm("mailbox", "status", "-u", unique_login, "messages", "INBOX")
    assert status.split() == ["INBOX", "messages=1"]
    with pytest.raises(TestbedError):
        old_server.doveadm("mailbox", "list", "-u", "nobody-here@example.com")


def test_stop_leaves_no_process_and_frees_the_port(tmp_path: Path, certs: trustme.CA) -> None:
    server = make_new_server(tmp_path / "short-lived", certs)
    with pytest.raises(RuntimeError, match="boom"):
        with server:
            pid, port = server.pid, server.imap_port
            assert pid is not None and Path(f"/proc/{pid}").exists()
            imaplib.IMAP4(server.host, port).logout()
            raise RuntimeError("boom")
    assert server.pid is None
    assert not Path(f"/proc/{pid}").exists()  # reaped, not even a zombie
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, port), timeout=2).close()
    server.stop()  # idempotent


def test_start_retries_when_a_chosen_port_is_taken(
    tmp_path: Path, certs: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = testbed._free_port
        monkeypatch.setattr(testbed, "_free_port", lambda host: next(ports, None) or real_free_port(host))
        with make_new_server(tmp_path / "retry", certs) as server:
            assert server.imap_port != taken
            imaplib.IMAP4(server.host, server.imap_port).logout()
        assert "Address already in use" in (tmp_path / "retry" / "dovecot.log").read_text()


def test_missing_dovecot_binaries_fail_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(testbed, "_SEARCH_PATH", str(tmp_path))
    with pytest.raises(TestbedError, match="install dovecot-imapd"):
        make_new_server(tmp_path / "nothing").start()
