"""Alias discovery for the access modes, from the recipient headers of an account's mail.

`username`: no aliases (the login is the address). `standard`: one alias, the
account's own address as its mail shows it. `extended`: every address of the
account's domain that its mail shows was delivered to it.

Evidence of "delivered to this account": an envelope header (Delivered-To,
X-Envelope-To when enabled), or a To/Cc address when it is the only address of
the account's domain on that message (otherwise a colleague on the same
message could be taken for an alias).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
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
