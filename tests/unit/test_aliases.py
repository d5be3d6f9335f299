"""Alias discovery per access mode, and the Postfix alias map file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailmigrator.adapters.alias_map import AliasMap
from mailmigrator.domain.aliases import discover_aliases


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


def test_alias_map_merges_and_keeps_foreign_lines(tmp_path: Path) -> None:
    path = tmp_path / "virtual"
    path.write_text("# managed by postfix admin\npostmaster@example.com  root@example.com\n")
    path.chmod(0o640)
    aliases = AliasMap(path)
    aliases.add("jsmith@example.com", ["js@example.com", "sales@example.com"])
    aliases.add("anna@example.com", ["sales@example.com"])
    aliases.add("anna@example.com", [])
    text = path.read_text()
    assert text.startswith("# managed by postfix admin\npostmaster@example.com  root@example.com\n")
    assert aliases.entries() == {
        "postmaster@example.com": "root@example.com",
        "js@example.com": "jsmith@example.com",
        "sales@example.com": "anna@example.com",
    }
    assert path.stat().st_mode & 0o777 == 0o640
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".virtual.")], "no temp file left behind"
