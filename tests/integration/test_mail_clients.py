"""The real mail-client drivers against the old Dovecot alone: the controls migration tests compare with.

Without any migration, getmail (POP3, leave on server) fetches each message exactly once and
mbsync downloads each message exactly once and follows flag changes and expunges.  The last
tests show that the drivers notice what a badly done migration does to these clients: a
changed UIDVALIDITY makes getmail fetch everything again and, with new UIDs, stops mbsync.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mail_clients import Getmail, GetmailRun, Mbsync, MbsyncRun, ServerEndpoint
from testbed import DovecotServer, MailboxSnapshot, Tls, make_message, seed_bulk, seed_standard_mailbox

pytestmark = pytest.mark.dovecot

PASSWORD = "Pässwörd-€-1"


@pytest.fixture
def user(old_server: DovecotServer, unique_login: str) -> str:
    """A fresh old-server login with a non-ASCII name part and a UTF-8 password."""
    login = f"jörg.{unique_login}"
    old_server.add_user(login, PASSWORD)
    return login


def pop3_endpoint(server: DovecotServer, tls: Tls) -> ServerEndpoint:
    port = server.pop3s_port if tls == "implicit" else server.pop3_port
    assert port is not None
    return ServerEndpoint(server.host, port, tls, server.ca_pem)


def imap_endpoint(server: DovecotServer, tls: Tls) -> ServerEndpoint:
    port = server.imaps_port if tls == "implicit" else server.imap_port
    assert port is not None
    # mbsync matches the certificate's DNS names only; the test bed's certificate names localhost.
    return ServerEndpoint("localhost" if tls != "none" else server.host, port, tls, server.ca_pem)


def normalised(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n")


def seed_inbox(server: DovecotServer, login: str, tag: str, count: int) -> None:
    seed_bulk(server, login, "INBOX", [make_message(f"{login}-{tag}-{n}") for n in range(count)])


def assert_fetched(run: GetmailRun, count: int) -> None:
    """getmail succeeded, says it retrieved *count* messages, and *count* files arrived."""
    assert (run.returncode, run.retrieved, run.delivered) == (0, count, count), run.describe()


def assert_downloaded(run: MbsyncRun, downloaded: dict[str, int]) -> None:
    """mbsync succeeded and exactly these folders gained these numbers of message files."""
    assert (run.returncode, run.downloaded) == (0, downloaded), run.describe()


def getmail_after_first_fetch(server: DovecotServer, login: str, tmp_path: Path, count: int) -> Getmail:
    """A plain-POP3 getmail that has fetched the *count* messages just put into *login*'s INBOX."""
    seed_inbox(server, login, tmp_path.name, count)
    getmail = Getmail(tmp_path, pop3_endpoint(server, "none"), login, PASSWORD)
    assert_fetched(getmail.fetch(), count)
    return getmail


def mbsync_after_first_sync(server: DovecotServer, login: str, tmp_path: Path, count: int) -> Mbsync:
    """A plain-IMAP mbsync that has downloaded the *count* messages just put into *login*'s INBOX."""
    seed_inbox(server, login, tmp_path.name, count)
    mbsync = Mbsync(tmp_path, imap_endpoint(server, "none"), login, PASSWORD)
    assert_downloaded(mbsync.sync(), {"INBOX": count})
    return mbsync


@pytest.mark.parametrize("tls", ["none", "implicit"])
def test_getmail_fetches_each_message_exactly_once(
    old_server: DovecotServer, user: str, tmp_path: Path, tls: Tls,
) -> None:
    seeded = [make_message(f"{user}-pop-{n}") for n in range(4)]
    seed_bulk(old_server, user, "INBOX", seeded)
    seed_bulk(old_server, user, "Work", [make_message(f"{user}-not-pop3")])
    getmail = Getmail(tmp_path, pop3_endpoint(old_server, tls), user, PASSWORD)

    assert_fetched(getmail.fetch(), 4)
    assert sorted(map(normalised, getmail.delivered_messages())) == sorted(map(normalised, seeded))
    assert len(getmail.seen_uidls()) == 4

    assert_fetched(getmail.fetch(), 0)

    late = make_message(f"{user}-pop-late")
    seed_bulk(old_server, user, "INBOX", [late])
    assert_fetched(getmail.fetch(), 1)
    assert normalised(late) in map(normalised, getmail.delivered_messages())
    assert_fetched(getmail.fetch(), 0)
    assert len(getmail.delivered()) == 5


def test_getmail_moved_to_another_address_of_the_same_server_fetches_nothing_again(
    old_server: DovecotServer, user: str, tmp_path: Path,
) -> None:
    getmail = getmail_after_first_fetch(old_server, user, tmp_path, 3)

    getmail.move_to(pop3_endpoint(old_server, "implicit"))
    moved = getmail.fetch()
    assert_fetched(moved, 0)
    assert "--getmaildir" in moved.command and PASSWORD not in " ".join(moved.command)
    assert PASSWORD not in getmail.rcfile.read_text()
    assert getmail.password_file.stat().st_mode & 0o777 == 0o600


def expected_counts(snapshot: MailboxSnapshot) -> dict[str, int]:
    return {folder: len(records) for folder, records in snapshot.folders.items() if records}


@pytest.mark.parametrize("tls", ["none", "starttls", "implicit"])
def test_mbsync_downloads_every_folder_once_and_follows_the_server(
    old_server: DovecotServer, user: str, tmp_path: Path, tls: Tls,
) -> None:
    expected = seed_standard_mailbox(old_server, user)
    mbsync = Mbsync(tmp_path, imap_endpoint(old_server, tls), user, PASSWORD)

    first = mbsync.sync()
    assert first.returncode == 0, first.describe()
    assert mbsync.local_folders() == sorted(expected.folders)
    assert first.downloaded == expected_counts(expected)
    assert sorted(mbsync.local_contents("INBOX")) == sorted(map(normalised, _inbox_raw(old_server, user)))

    assert_downloaded(mbsync.sync(), {})

    seed_bulk(old_server, user, "Projekte/Alpha", [make_message(f"{user}-imap-late")])
    assert_downloaded(mbsync.sync(), {"Projekte/Alpha": 1})
    assert mbsync.sync().downloaded_total == 0


def _inbox_raw(server: DovecotServer, login: str) -> list[bytes]:
    with server.imap(login) as client:
        client.select_folder("INBOX", readonly=True)
        fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[]"])
    return [data[b"BODY[]"] for data in fetched.values()]


def test_mbsync_carries_flags_and_deletions_both_ways(old_server: DovecotServer, user: str, tmp_path: Path) -> None:
    mbsync = mbsync_after_first_sync(old_server, user, tmp_path, 4)
    assert mbsync.local_uids("INBOX") == [1, 2, 3, 4]
    assert set(mbsync.local_flags("INBOX").values()) == {""}

    with old_server.imap(user) as client:
        client.select_folder("INBOX")
        client.add_flags([1], [b"\\Flagged"])
        client.delete_messages([2])
        client.expunge()
    assert_downloaded(mbsync.sync(), {})
    assert mbsync.local_flags("INBOX") == {1: "F", 3: "", 4: ""}

    mbsync.set_local_flag("INBOX", 3, "S")
    mbsync.delete_local("INBOX", 4)
    assert_downloaded(mbsync.sync(), {})
    with old_server.imap(user) as client:
        client.select_folder("INBOX", readonly=True)
        flags = {uid: set(data[b"FLAGS"]) for uid, data in client.fetch(client.search("ALL"), ["FLAGS"]).items()}
    assert flags == {1: {b"\\Flagged"}, 3: {b"\\Seen"}}


def test_getmail_fetches_everything_again_after_a_uidvalidity_change(
    old_server: DovecotServer, user: str, tmp_path: Path,
) -> None:
    getmail = getmail_after_first_fetch(old_server, user, tmp_path, 3)
    # Dovecot's default POP3 UIDL is %08Xu%08Xv: UID and UIDVALIDITY.
    old_server.doveadm("mailbox", "update", "-u", user, "--uid-validity", "4242", "INBOX")
    assert_fetched(getmail.fetch(), 3)
    assert len(getmail.delivered()) == 6


def test_mbsync_stops_on_a_uidvalidity_change_with_new_uids(
    old_server: DovecotServer, user: str, tmp_path: Path,
) -> None:
    mbsync = mbsync_after_first_sync(old_server, user, tmp_path, 3)
    # What a copy by APPEND does: the same messages under new UIDs and a new UIDVALIDITY.
    with old_server.imap(user) as client:
        client.select_folder("INBOX")
        fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[]"])
        client.delete_messages(list(fetched))
        client.expunge()
        for uid in sorted(fetched):
            client.append("INBOX", fetched[uid][b"BODY[]"])
    old_server.doveadm("mailbox", "update", "-u", user, "--uid-validity", "4343", "INBOX")

    for _ in range(2):
        broken = mbsync.sync()
        assert broken.returncode == 1, broken.describe()
        assert "Unable to recover from UIDVALIDITY change" in broken.output


def test_mbsync_recovers_from_a_uidvalidity_change_when_the_uids_stay(
    old_server: DovecotServer, user: str, tmp_path: Path,
) -> None:
    mbsync = mbsync_after_first_sync(old_server, user, tmp_path, 3)
    old_server.doveadm("mailbox", "update", "-u", user, "--uid-validity", "4444", "INBOX")
    recovered = mbsync.sync()
    assert_downloaded(recovered, {})
    assert "Recovered from change of UIDVALIDITY" in recovered.output


def test_mbsync_moved_to_another_address_of_the_same_server_downloads_nothing_again(
    old_server: DovecotServer, user: str, tmp_path: Path,
) -> None:
    mbsync = mbsync_after_first_sync(old_server, user, tmp_path, 2)
    mbsync.move_to(imap_endpoint(old_server, "implicit"))
    moved = mbsync.sync()
    assert_downloaded(moved, {})
    assert PASSWORD not in " ".join(moved.command) and PASSWORD not in mbsync.rcfile.read_text()
    assert mbsync.password_file.stat().st_mode & 0o777 == 0o600
