"""IMAP response texts: bytes or text in, facts out. Touches no socket."""

from __future__ import annotations

import re

# RFC 5530 response codes that mean "not now" rather than "never".
TRANSIENT_CODES = frozenset({"UNAVAILABLE", "INUSE", "SERVERBUG", "THROTTLED"})

_CODE = re.compile(r"\[([A-Za-z0-9.-]+)")
_APPENDUID = re.compile(r"\[APPENDUID (\d+) ([0-9:,]+)\]", re.IGNORECASE)


def _text(response: bytes | str | object) -> str:
    if isinstance(response, bytes):
        return response.decode("utf-8", "replace")
    return str(response)


def response_code(response: bytes | str) -> str | None:
    """The RFC 5530 response code in brackets, upper-cased, or None."""
    match = _CODE.search(_text(response))
    return match.group(1).upper() if match else None


def is_transient_response(response: bytes | str) -> bool:
    """Whether a NO/BYE text says "try again later" (unavailable, in use, throttled)."""
    text = _text(response)
    if response_code(text) in TRANSIENT_CODES:
        return True
    lowered = text.lower()
    return "throttl" in lowered or "try again later" in lowered or "too many connections" in lowered


def parse_uid_set(text: str) -> list[int]:
    """RFC 3501 sequence set of UIDs (no "*") as a list: "3:5,9" -> [3, 4, 5, 9]."""
    uids: list[int] = []
    for part in text.split(","):
        if ":" in part:
            low, high = sorted(int(n) for n in part.split(":", 1))
            uids.extend(range(low, high + 1))
        elif part:
            uids.append(int(part))
    return uids


def parse_appenduid(response: bytes | str) -> tuple[int, list[int]] | None:
    """UIDVALIDITY and the assigned UIDs from an RFC 4315 APPENDUID code, or None."""
    match = _APPENDUID.search(_text(response))
    if match is None:
        return None
    return int(match.group(1)), parse_uid_set(match.group(2))


def one_line(response: bytes | str | object, limit: int = 200) -> str:
    """A server reply as one short line for an event or a log."""
    text = " ".join(_text(response).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
