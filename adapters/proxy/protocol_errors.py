"""The three kinds of error a pre-authentication command can end in.

User errors (wrong password, refused login) and server errors (a backend
down, a migration in progress) become IMAP `NO`; syntax errors become IMAP
`BAD`. POP3 has only `-ERR`; its RFC 2449/3206 response code carries the kind.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A command that failed; `code` is the IMAP response code, if any."""

    imap_status = "NO"

    def __init__(self, text: str, code: str = "", pop3_code: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.pop3_code = pop3_code


class UserError(ProtocolError):
    """The client asked for something it may not have (bad credentials, throttled)."""


class ServerError(ProtocolError):
    """Something on our side or a backend's failed; the client may try again later."""

    def __init__(self, text: str, code: str = "UNAVAILABLE", pop3_code: str = "SYS/TEMP") -> None:
        super().__init__(text, code, pop3_code)


class CommandSyntaxError(ProtocolError):
    """The command could not be parsed, or is not allowed in this state."""

    imap_status = "BAD"

    def __init__(
        self, text: str, code: str = "", pop3_code: str = "", *, fatal: bool = False, tag: str = "*"
    ) -> None:
        super().__init__(text, code, pop3_code)
        # Fatal: the input stream cannot be resynchronised, the connection must end.
        self.fatal = fatal
        # The tag of the command it answers; "*" when the command had none yet.
        self.tag = tag


def imap_reply(tag: str, error: ProtocolError) -> bytes:
    """The tagged IMAP response line for `error` (`*` tag makes it untagged)."""
    code = f"[{error.code}] " if error.code else ""
    return f"{tag} {error.imap_status} {code}{error.text}\r\n".encode()


def pop3_reply(error: ProtocolError) -> bytes:
    """The POP3 `-ERR` line for `error`, with its RFC 2449 response code (RFC 3206 names)."""
    code = f"[{error.pop3_code}] " if error.pop3_code else ""
    return f"-ERR {code}{error.text}\r\n".encode()


def authentication_failed() -> UserError:
    return UserError("Authentication failed.", "AUTHENTICATIONFAILED", "AUTH")


def migration_in_progress() -> ServerError:
    return ServerError("Migration in progress, try again later", "UNAVAILABLE", "IN-USE")
