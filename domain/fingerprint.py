"""What identifies a message across servers, and the date a POP3 message was received.

A fingerprint is Message-ID + size + SHA-256 of the exact bytes: it matches a
message already on the target when a checkpoint cannot be trusted (UIDVALIDITY
changed, checkpoint lost, or APPENDs after the last checkpoint).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parsedate_to_datetime


@dataclass(frozen=True, order=True)
class Fingerprint:
    message_id: str
    size: int
    sha256: str


def header_block(raw: bytes) -> bytes:
    """The header section: everything before the first empty line."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(separator)
        if end != -1:
            return raw[: end + len(separator)]
    return raw


def _headers(raw: bytes) -> list[tuple[str, str]]:
    message = BytesHeaderParser(policy=compat32).parsebytes(header_block(raw))
    return [(name.lower(), str(value)) for name, value in message.items()]


def message_id(raw: bytes) -> str:
    """The Message-ID header, whitespace removed; "" when there is none."""
    for name, value in _headers(raw):
        if name == "message-id":
            return "".join(value.split())
    return ""


def fingerprint(raw: bytes) -> Fingerprint:
    return Fingerprint(message_id(raw), len(raw), hashlib.sha256(raw).hexdigest())


def _parse_date(text: str) -> datetime | None:
    try:
        when = parsedate_to_datetime(" ".join(text.split()))
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    # RFC 5322 "-0000" (zone unknown) parses as naive: take it as UTC.
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def received_date(raw: bytes) -> datetime | None:
    """When the message arrived: the date of the last-added (topmost) Received: header, else Date:.

    Each relay prepends its Received: header (RFC 5321 section 4.4), so the
    topmost one was written by the server that delivered it into the mailbox.
    """
    headers = _headers(raw)
    for name, value in headers:
        if name == "received" and ";" in value:
            when = _parse_date(value.rsplit(";", 1)[1])
            if when is not None:
                return when
    for name, value in headers:
        if name == "date":
            return _parse_date(value)
    return None
