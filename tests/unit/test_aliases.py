"""Alias discovery per access mode, and the Postfix alias map file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailmigrator.adapters.accounts.alias_map import AliasMap
from mailmigrator.domain.aliases import (
    SHOWN_CHARACTERS,
    decide_alias,
    discover_aliases,
    is_strict_address,
    shown_address,
)


def headers(**fields: str) -> bytes:
    return "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in fields.items()).encode() + b"\r\n"


MAIL = [
    headers(Delivered_To="john.smith@example.com", To="John <john.smith@example.com>"),
    headers(Delivered_To="john.smith@example.com", To="team@example.com, bob@example.com"),
    headers(To="js@example.com", Cc="someone@other.org"),
    headers(X_Envelope_To="sales@example.com", To="Sales <sales@example.com>, x@else.org"),
    headers(To="jsmith@example.com"),
]


@pytest.mark.parametrize(
    ("mode", "x_envelope", "expected"),
    [
        ("username", True, []),
        ("standard", True, ["john.smith@example.com"]),
        ("extended", True, ["john.smith@example.com", "js@example.com", "sales@example.com"]),
        ("extended", False, ["john.smith@example.com", "js@example.com", "sales@example.com"]),
    ],
)
def test_discovery_per_mode(mode: str, x_envelope: bool, expected: list[str]) -> None:
    assert discover_aliases("jsmith@example.com", MAIL, mode, use_x_envelope_to=x_envelope) == expected


def test_x_envelope_to_is_ignored_when_disabled() -> None:
    mail = [headers(X_Envelope_To="hidden@example.com", To="a@example.com, b@example.com")]
    assert discover_aliases("u@example.com", mail, "extended", use_x_envelope_to=True) == ["hidden@example.com"]
    assert discover_aliases("u@example.com", mail, "extended", use_x_envelope_to=False) == []


def test_colleagues_on_the_same_message_are_not_aliases() -> None:
    mail = [headers(To="anna@example.com, ben@example.com", Cc="carl@example.com")]
    assert discover_aliases("dora@example.com", mail, "extended") == []


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        discover_aliases("u@example.com", [], "fancy")


def test_alias_map_adds_keeps_every_line_and_never_remaps(tmp_path: Path) -> None:
    path = tmp_path / "virtual"
    path.write_text("# managed by postfix admin\npostmaster@example.com  root@example.com\n")
    path.chmod(0o640)
    aliases = AliasMap(path)
    assert aliases.add("jsmith@example.com", ["js@example.com", "sales@example.com"]) == {}
    assert aliases.add("anna@example.com", ["sales@example.com", "postmaster@example.com"]) == {
        "sales@example.com": "jsmith@example.com", "postmaster@example.com": "root@example.com"}
    assert aliases.add("jsmith@example.com", ["js@example.com"]) == {}
    assert aliases.add("anna@example.com", []) == {}
    assert path.read_text() == (
        "# managed by postfix admin\npostmaster@example.com  root@example.com\n"
        "js@example.com  jsmith@example.com\nsales@example.com  jsmith@example.com\n")
    assert path.stat().st_mode & 0o777 == 0o640
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".virtual.")], "no temp file left behind"


@pytest.mark.parametrize("separator", ["\x1c", "\x85", "\u2028", "\x0b", "\x0c"])
def test_alias_map_splits_lines_on_newline_only(tmp_path: Path, separator: str) -> None:
    path = tmp_path / "virtual"
    before = f"x@example.com{separator}evil@example.com  outside@elsewhere.org\nkept@example.com  a@example.com\n"
    path.write_bytes(before.encode() + b"raw\xff@example.com  b@example.com\n")
    aliases = AliasMap(path)
    assert "evil@example.com" not in aliases.entries()
    assert aliases.add("bob@example.com", ["new@example.com"]) == {}
    assert path.read_bytes() == before.encode() + b"raw\xff@example.com  b@example.com\nnew@example.com  bob@example.com\n"
    assert aliases.entries()["kept@example.com"] == "a@example.com"


def test_alias_map_continuation_lines_are_not_keys(tmp_path: Path) -> None:
    path = tmp_path / "virtual"
    path.write_text("list@example.com  a@example.com,\n  b@example.com\n")
    assert AliasMap(path).entries() == {"list@example.com": "a@example.com"}


@pytest.mark.parametrize(("text", "strict"), [
    ("ceo@example.com", True),
    ("first.last+tag@mail.example.co.uk", True),
    ("o'neil!#$%&*/=?^_`{|}~-@example.com", True),
    ("a@b-c.example", True),
    ("x" * 64 + "@example.com", True),
    ("x" * 65 + "@example.com", False),
    ("a@" + ".".join(["d" * 63] * 3) + ".com", True),
    ("a@" + "d" * 64 + ".com", False),
    ("x" * 10 + "@" + ".".join(["d" * 61] * 4) + ".com", False),  # a 251-octet domain, but 254 octets at most
    ("", False),
    ("@example.com", False),
    ("ceo@", False),
    ("ceo", False),
    ("ceo@localhost", False),
    ("a@b@example.com", False),
    (".ceo@example.com", False),
    ("ceo.@example.com", False),
    ("c..eo@example.com", False),
    ("ceo@-example.com", False),
    ("ceo@example-.com", False),
    ("ceo@exa_mple.com", False),
    ("ceo@example..com", False),
    ('"ceo"@example.com', False),
    ("ceo@[127.0.0.1]", False),
    ("c eo@example.com", False),
    ("ceo@example.com ", False),
    ("ceo\t@example.com", False),
    ("ceo@example.com\nx@evil.org", False),
    ("x@evil.org\x1cceo@example.com", False),
    ("ceo\x85@example.com", False),
    ("ceo\u2028@example.com", False),
    ("ceo\x00@example.com", False),
    ("ceo\x7f@example.com", False),
    ("cëo@example.com", False),
    ("ceo@exämple.com", False),
    ("ceo\udc85@example.com", False),
])
def test_strict_address(text: str, strict: bool) -> None:
    assert is_strict_address(text) is strict


def test_a_refused_address_is_shown_escaped_and_short() -> None:
    assert shown_address("ceo@example.com") == "ceo@example.com"
    assert shown_address("x@evil.org\x1cceo@example.com") == "x@evil.org\\x1cceo@example.com"
    assert shown_address("a\u2028b \\\udc85") == "a\\u2028b\\x20\\x5c\\udc85"
    long = shown_address("\x85" * 200)
    assert len(long) == SHOWN_CHARACTERS + 3 and long.isascii() and long.isprintable()


MAPPED = {"ceo@example.com": "chief@example.com", "js@example.com": "JSmith@example.com"}
ACCOUNTS = {"anna@example.com"}


@pytest.mark.parametrize(("address", "action", "reason"), [
    ("sales@example.com", "apply", ""),
    ("Sales@Example.com", "apply", ""),
    ("sales@navi1.com", "apply", ""),
    ("ceo@example.com", "conflict", "already mapped to chief@example.com"),
    ("js@example.com", "present", ""),
    ("anna@example.com", "conflict", "is an account"),
    ("jsmith@example.com", "conflict", "is an account"),
    ("boss@outside.org", "conflict", "not a migrated domain"),
    ("x@evil.org\x1cceo@example.com", "conflict", "not a plain address"),
    ("@example.com", "conflict", "not a plain address"),
])
def test_alias_decision(address: str, action: str, reason: str) -> None:
    decision = decide_alias(address, "jsmith@example.com", migrated_domains={"example.com", "navi1.com"},
                            accounts=ACCOUNTS, alias_map=MAPPED)
    assert (decision.action, decision.reason) == (action, reason)
    assert decision.address == shown_address(address.lower() if action != "conflict" or reason != "not a plain address" else address)
