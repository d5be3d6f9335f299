"""The one wire form of login credentials: UTF-8, never NUL, CR or LF."""

from __future__ import annotations

from mailmigrator.domain.errors import ExplainedError


class UnsendableCredentials(ExplainedError):
    """A name or password holds NUL, CR, LF or a lone surrogate, which no login command can carry."""

    def __init__(self) -> None:
        super().__init__("the login name or password holds a character that cannot be sent (NUL, CR, LF or invalid)")


def credential_bytes(text: str) -> bytes:
    """`text` as UTF-8, the encoding RFC 4616 (PLAIN), RFC 6855 and RFC 1939 servers expect; never NUL, CR or LF."""
    try:
        data = text.encode("utf-8")
    except UnicodeError:
        raise UnsendableCredentials() from None
    if b"\0" in data or b"\r" in data or b"\n" in data:
        raise UnsendableCredentials()
    return data


def sasl_plain(authcid: str, password: str, authzid: str = "") -> bytes:
    """The RFC 4616 PLAIN message: authzid NUL authcid NUL passwd, each UTF-8."""
    return b"\0".join((credential_bytes(authzid), credential_bytes(authcid), credential_bytes(password)))
