"""Alias discovery for the access modes, from the recipient headers of an account's mail.

`username`: no aliases (the login is the address). `standard`: one alias, the
account's own address as its mail shows it. `extended`: every address of the
account's domain that its mail shows was delivered to it.

Evidence of "delivered to this account": an envelope header (Delivered-To,
X-Envelope-To when enabled), or a To/Cc address when it is the only address of
the account's domain on that message (otherwise a colleague on the same
message could be taken for an alias).

Headers are written by whoever sent the mail, so a found address is only a
candidate: `decide_alias` applies it only when it is a plain address of a
migrated domain, not an account and not mapped yet; the rest go to the admin.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Container, Iterable, Mapping
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from mailmigrator.domain.logins import domain_part

ACCESS_MODES = ("username", "standard", "extended")


def recipient_addresses(header_block: bytes, use_x_envelope_to: bool) -> tuple[list[str], list[str]]:
    """(envelope addresses, To/Cc addresses) of one message's header block, lower-cased."""
    message = BytesHeaderParser(policy=compat32).parsebytes(header_block)
    envelope_fields = ["Delivered-To"] + (["X-Envelope-To"] if use_x_envelope_to else [])
    envelope = [a for _, a in getaddresses([str(v) for f in envelope_fields for v in message.get_all(f, [])])]
    visible = [a for _, a in getaddresses([str(v) for f in ("To", "Cc") for v in message.get_all(f, [])])]
    return [a.lower() for a in envelope if "@" in a], [a.lower() for a in visible if "@" in a]


def discover_aliases(
    login: str, header_blocks: Iterable[bytes], mode: str, *, use_x_envelope_to: bool = True
) -> list[str]:
    """The aliases of `login` that its messages' headers show, per access mode; sorted, without the login."""
    if mode not in ACCESS_MODES:
        raise ValueError(f"unknown access mode {mode!r}")
    if mode == "username":
        return []
    domain = domain_part(login)
    seen: Counter[str] = Counter()
    for block in header_blocks:
        envelope, visible = recipient_addresses(block, use_x_envelope_to)
        found = {a for a in envelope if domain_part(a) == domain}
        own_domain_visible = {a for a in visible if domain_part(a) == domain}
        if len(own_domain_visible) == 1:
            found |= own_domain_visible
        seen.update(found)
    seen.pop(login, None)
    if not seen:
        return []
    if mode == "standard":
        # The most frequent address; ties go to the alphabetically first, so replay agrees.
        best = sorted(seen.items(), key=lambda item: (-item[1], item[0]))[0][0]
        return [best]
    return sorted(seen)


# RFC 5321 section 4.1.2 (Dot-string, Atom) and RFC 5322 section 3.2.3 (atext).
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
# RFC 5321 section 4.5.3.1: local part 64 octets, domain 255, a label 63 (RFC 1035 section 2.3.4);
# a path is at most 256 octets with its angle brackets, so an address at most 254.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_LABEL = 63
MAX_ADDRESS = 254
# How much of a refused address the admin is shown, escaped.
SHOWN_CHARACTERS = 80


def is_strict_address(text: str) -> bool:
    """Whether `text` is a plain `dot-atom@ldh.domain` address: ASCII only, no space or control character."""
    if len(text) > MAX_ADDRESS or text.count("@") != 1:
        return False
    local, _, domain = text.partition("@")
    if not 0 < len(local) <= MAX_LOCAL_PART or not 0 < len(domain) <= MAX_DOMAIN:
        return False
    if any(not atom or not _ATEXT.issuperset(atom) for atom in local.split(".")):
        return False
    labels = domain.split(".")
    if len(labels) < 2:
        return False
    return all(
        0 < len(label) <= MAX_LABEL and _LDH.issuperset(label) and label[0] != "-" and label[-1] != "-"
        for label in labels
    )


def shown_address(text: str) -> str:
    """`text` as it may be shown and stored: itself when strict, else escaped to printable ASCII and cut short."""
    if is_strict_address(text):
        return text
    escaped = "".join(c if " " < c < "\x7f" and c != "\\" else _escape(c) for c in text)
    return escaped if len(escaped) <= SHOWN_CHARACTERS else escaped[:SHOWN_CHARACTERS] + "..."


def _escape(character: str) -> str:
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


@dataclass(frozen=True)
class AliasDecision:
    """What to do with one alias of an account: `apply` it, it is `present` already, or a `conflict` (reason)."""

    address: str
    action: str
    reason: str = ""


def mapped_elsewhere(address: str, mapped_to: str) -> AliasDecision:
    """The conflict of an alias that the map already sends to `mapped_to`."""
    return AliasDecision(address, "conflict", f"already mapped to {shown_address(mapped_to)}")


def decide_alias(
    address: str,
    account: str,
    *,
    migrated_domains: Collection[str],
    accounts: Container[str],
    alias_map: Mapping[str, str],
) -> AliasDecision:
    """Whether `address` may be mapped to `account`: only a strict, unmapped, non-account address of a migrated domain.

    `address` is stored in the decision only in its `shown_address` form.
    """
    if not is_strict_address(address):
        return AliasDecision(shown_address(address), "conflict", "not a plain address")
    address = address.lower()
    if domain_part(address) not in migrated_domains:
        return AliasDecision(address, "conflict", "not a migrated domain")
    mapped_to = alias_map.get(address)
    if mapped_to is not None:
        if mapped_to.lower() == account:
            return AliasDecision(address, "present")
        return mapped_elsewhere(address, mapped_to)
    if address == account or address in accounts:
        return AliasDecision(address, "conflict", "is an account")
    return AliasDecision(address, "apply")
