"""Table tests of the copy engine's pure parts: folder names, fingerprints, responses, resume points, comparisons."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from imapclient import imap_utf7

from mailmigrator.adapters.mail.copier import batches, pipelined_batches, resume_point
from mailmigrator.domain.credentials import Credentials
from mailmigrator.adapters.imap.responses import is_transient_response, parse_appenduid, response_code
from mailmigrator.adapters.mail.message_source import FolderListing, SourceMessage
from mailmigrator.adapters.pop3.source import unique_by_uidl
from mailmigrator.adapters.mail.comparison import MessageState, compare_folder
from mailmigrator.domain.checkpoints import FolderCheckpoint
from mailmigrator.domain.fingerprint import fingerprint, message_id, received_date
from mailmigrator.domain.folders import (
    ListedFolder,
    Namespace,
    escape_component,
    excluded_by,
    join_name,
    plan_folders,
    split_name,
)

DOT = Namespace("INBOX.", ".")
SLASH = Namespace("", "/")


@pytest.mark.parametrize(
    ("name", "source", "target", "expected"),
    [
        ("INBOX", DOT, SLASH, "INBOX"),
        ("INBOX.Sent.2019", DOT, SLASH, "Sent/2019"),
        ("Sent/2019", SLASH, DOT, "INBOX.Sent.2019"),
        ("INBOX.a/b", DOT, SLASH, "a\u2215b"),  # the other side's separator is escaped, not a hierarchy
        ("x.y/z", SLASH, DOT, "INBOX.x\u2024y.z"),
        ("Entwürfe/Ärger", SLASH, DOT, "INBOX.Entwürfe.Ärger"),
        ("flat", Namespace("", ""), SLASH, "flat"),
    ],
)
def test_folder_names_translate(name: str, source: Namespace, target: Namespace, expected: str) -> None:
    assert join_name(split_name(name, source), target) == expected


@pytest.mark.parametrize(("component", "separator", "expected"), [
    ("a/b", "/", "a\u2215b"), ("a.b", ".", "a\u2024b"), ("a.b", "/", "a.b"), ("a|b", "|", "a_b"),
])
def test_escape_component(component: str, separator: str, expected: str) -> None:
    assert escape_component(component, separator) == expected


@pytest.mark.parametrize("name", ["Entwürfe", "Ärger & Co", "日本語", "a&b"])
def test_modified_utf7_round_trip(name: str) -> None:
    encoded = imap_utf7.encode(name)
    assert encoded.isascii() and imap_utf7.decode(encoded) == name


def test_plan_maps_special_use_by_attribute_and_by_name_with_children() -> None:
    listed = [
        ListedFolder("INBOX", subscribed=True),
        ListedFolder("INBOX.Gesendet", frozenset({"\\Sent"}), True),
        ListedFolder("INBOX.Gesendet.2019", frozenset(), True),
        ListedFolder("INBOX.Deleted Items", frozenset(), False),
        ListedFolder("INBOX.Eltern", frozenset({"\\Noselect"})),
        ListedFolder("INBOX.Eltern.Kind"),
        ListedFolder("INBOX.Spam"),
        ListedFolder("INBOX.Old.Junk"),
    ]
    special = {"\\Sent": "Sent Messages", "\\Trash": "Papierkorb", "\\Junk": "Junk"}
    plan = plan_folders(listed, DOT, SLASH, special, exclude=["Old/*"])
    targets = {f.source: f.target for f in plan.folders}
    assert targets == {
        "INBOX": "INBOX",
        "INBOX.Gesendet": "Sent Messages",
        "INBOX.Gesendet.2019": "Sent Messages/2019",
        "INBOX.Deleted Items": "Papierkorb",
        "INBOX.Eltern": "Eltern",
        "INBOX.Eltern.Kind": "Eltern/Kind",
        "INBOX.Spam": "Junk",
    }
    assert [e.source for e in plan.excluded] == ["INBOX.Old.Junk"]
    assert not plan.by_source()["INBOX.Eltern"].selectable
    assert plan.by_source()["INBOX.Gesendet"].subscribed


def test_two_folders_claiming_one_special_use_keep_the_second_name() -> None:
    listed = [ListedFolder("Sent"), ListedFolder("Sent Items")]
    plan = plan_folders(listed, SLASH, SLASH, {"\\Sent": "Gesendet"})
    assert {f.source: f.target for f in plan.folders} == {"Sent": "Gesendet", "Sent Items": "Sent Items"}


@pytest.mark.parametrize(("name", "patterns", "expected"), [
    ("INBOX.Trash", ["Trash"], "Trash"),
    ("INBOX.Archive.2019", ["Archive/*"], "Archive/*"),
    ("INBOX.Archive", ["Archive/*"], None),
    ("INBOX", ["inbox"], "inbox"),
    ("INBOX.Trash", ["INBOX.Tr*"], "INBOX.Tr*"),
])
def test_exclude_folders_globs(name: str, patterns: list[str], expected: str | None) -> None:
    assert excluded_by(name, split_name(name, DOT), patterns) == expected


MESSAGE = (b"Received: from b by c; Tue, 02 Jan 2024 10:00:00 +0100\r\n"
           b"Received: from a by b; Mon, 01 Jan 2024 09:00:00 +0000\r\n"
           b"Message-ID: <x@y>\r\nDate: Sun, 31 Dec 2023 08:00:00 -0500\r\n\r\nbody\r\n")


@pytest.mark.parametrize(("raw", "expected"), [
    (MESSAGE, datetime(2024, 1, 2, 10, tzinfo=timezone(timedelta(hours=1)))),
    (b"Date: Sun, 31 Dec 2023 08:00:00 -0500\r\n\r\nx", datetime(2023, 12, 31, 8, tzinfo=timezone(timedelta(hours=-5)))),
    (b"Received: garbage without date\r\nDate: Sun, 31 Dec 2023 08:00:00 -0000\r\n\r\nx",
     datetime(2023, 12, 31, 8, tzinfo=timezone.utc)),
    (b"Subject: none\r\n\r\nx", None),
])
def test_pop3_internaldate_from_received_or_date(raw: bytes, expected: datetime | None) -> None:
    assert received_date(raw) == expected


def test_fingerprint_is_message_id_size_and_hash() -> None:
    fp = fingerprint(MESSAGE)
    assert (fp.message_id, fp.size) == ("<x@y>", len(MESSAGE))
    assert fingerprint(MESSAGE + b"!") != fp
    assert message_id(b"Subject: x\r\n\r\nMessage-ID: <in-body>\r\n") == ""


@pytest.mark.parametrize(("text", "code", "transient"), [
    (b"NO [UNAVAILABLE] Temporary failure", "UNAVAILABLE", True),
    (b"NO [INUSE] Mailbox in use", "INUSE", True),
    (b"NO [OVERQUOTA] Quota exceeded", "OVERQUOTA", False),
    (b"NO [LIMIT] Mail size is larger than allowed", "LIMIT", False),
    (b"NO Too many commands, throttled", None, True),
    (b"NO Mailbox doesn't exist", None, False),
])
def test_response_classification(text: bytes, code: str | None, transient: bool) -> None:
    assert response_code(text) == code
    assert is_transient_response(text) is transient


@pytest.mark.parametrize(("text", "expected"), [
    (b"[APPENDUID 38505 3955] APPEND completed", (38505, [3955])),
    (b"[APPENDUID 7 1:3,9] done", (7, [1, 2, 3, 9])),
    (b"APPEND completed", None),
])
def test_parse_appenduid(text: bytes, expected: tuple[int, list[int]] | None) -> None:
    assert parse_appenduid(text) == expected


LISTING = FolderListing(100, [SourceMessage(uid, 10) for uid in (3, 5, 8, 9)])


def _checkpoint(uidvalidity: int, highest_uid: int, target_uidvalidity: int, target_uidnext: int,
                last_uidl: str = "") -> FolderCheckpoint:
    return FolderCheckpoint("INBOX", uidvalidity, highest_uid, target_uidvalidity=target_uidvalidity,
                            target_uidnext=target_uidnext, last_uidl=last_uidl)


@pytest.mark.parametrize(("checkpoint", "target_validity", "uids", "from_uid", "held"), [
    (None, 1, [3, 5, 8, 9], 1, False),
    (_checkpoint(uidvalidity=100, highest_uid=5, target_uidvalidity=1, target_uidnext=40), 1, [8, 9], 40, True),
    (_checkpoint(uidvalidity=99, highest_uid=5, target_uidvalidity=1, target_uidnext=40), 1, [3, 5, 8, 9], 1, False),
    (_checkpoint(uidvalidity=100, highest_uid=5, target_uidvalidity=2, target_uidnext=40), 1, [3, 5, 8, 9], 1, False),
    (_checkpoint(uidvalidity=100, highest_uid=9, target_uidvalidity=1, target_uidnext=40), 1, [], 40, True),
])
def test_resume_point(
    checkpoint: FolderCheckpoint | None, target_validity: int, uids: list[int], from_uid: int, held: bool
) -> None:
    pending, first, ok = resume_point(LISTING, checkpoint, target_validity)
    assert ([m.uid for m in pending], first, ok) == (uids, from_uid, held)


def test_resume_point_by_uidl_and_lost_marker() -> None:
    listing = FolderListing(0, [SourceMessage(i, 1, f"u{i}") for i in (1, 2, 3)], by_uidl=True)
    cp = _checkpoint(uidvalidity=0, highest_uid=2, target_uidvalidity=5, target_uidnext=9, last_uidl="u2")
    assert [m.uidl for m in resume_point(listing, cp, 5)[0]] == ["u3"]
    assert [m.uidl for m in resume_point(listing, replace(cp, last_uidl="gone"), 5)[0]] == ["u1", "u2", "u3"]


def test_pop3_listing_is_deduplicated_by_uidl() -> None:
    got = unique_by_uidl([(1, "a"), (2, "b"), (3, "a")], {1: 10, 2: 20, 3: 30})
    assert [(m.uid, m.size, m.uidl) for m in got] == [(1, 10, "a"), (2, 20, "b")]


def test_batches_bound_bytes_and_count() -> None:
    messages = [SourceMessage(i, size) for i, size in enumerate([5, 5, 50, 1, 1, 1])]
    assert [[m.uid for m in b] for b in batches(messages, 10, 2)] == [[0, 1], [2], [3, 4], [5]]


def test_compare_folder_reports_missing_duplicates_flags_and_dates() -> None:
    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    a, b = MessageState("a" * 64, frozenset({"\\Seen"}), when), MessageState("b" * 64, frozenset(), when)
    assert compare_folder("INBOX", [a, b], [a, b]) == []
    lines = compare_folder("INBOX", [a, b], [a, a, MessageState("b" * 64, frozenset({"$X"}), when + timedelta(hours=1))])
    assert any("a duplicate" in line for line in lines)
    assert any("flags differ" in line for line in lines)
    assert any("internal date differs" in line for line in lines)
    assert any("missing" in line for line in compare_folder("INBOX", [a, b], [a]))


def test_credentials_never_print_the_password() -> None:
    secret = Credentials("alice", "hunter2-secret")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret) and "hunter2" not in f"{secret!r} {secret}"


def test_pipelined_batches_are_small_at_both_ends_and_keep_every_message_in_order() -> None:
    messages = [SourceMessage(uid, 1) for uid in range(18)]
    shaped = pipelined_batches(messages, 100, 8, ramp=4)
    assert [[m.uid for m in b] for b in shaped] == [[0, 1], [2, 3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15], [16, 17]]
    for count in (0, 1, 2, 3, 10, 11, 19, 40):
        some = [SourceMessage(uid, 3) for uid in range(count)]
        shaped = pipelined_batches(some, 20, 5, ramp=2)
        assert [m for b in shaped for m in b] == some and all(b for b in shaped)
        assert all(len(b) <= 5 and (sum(m.size for m in b) <= 20 or len(b) == 1) for b in shaped)
    big = [SourceMessage(1, 500), SourceMessage(2, 1), SourceMessage(3, 500)]
    assert [[m.uid for m in b] for b in pipelined_batches(big, 100, 10)] == [[1], [2], [3]]
