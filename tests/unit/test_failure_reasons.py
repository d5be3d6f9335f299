"""Failure reasons: only text this program wrote, never text built from what was sent."""

from __future__ import annotations

import imaplib

import pytest

from mailmigrator.domain.credentials import Credentials
from mailmigrator.adapters.mail.credentials import UnsendableCredentials, sasl_plain
from mailmigrator.adapters.mail.connection import LoginPlan, describe_error, login_failure

PASSWORD = "Grüne-2024"


def _encode_error() -> UnicodeEncodeError:
    try:
        PASSWORD.encode("ascii")
    except UnicodeEncodeError as e:
        return e
    raise AssertionError("unreachable")


@pytest.mark.parametrize("error", [_encode_error(), KeyError(PASSWORD), RuntimeError(f"sent {PASSWORD}")])
def test_errors_not_written_by_the_program_get_a_fixed_description(error: BaseException) -> None:
    text = describe_error(error)
    assert "ü" not in text and "\\xfc" not in text and "position" not in text and PASSWORD not in text
    assert text in ("text could not be encoded for the server", f"unexpected error ({type(error).__name__})")


def test_a_refused_login_keeps_only_who_and_the_response_code() -> None:
    plan = LoginPlan("bob@example.com", Credentials("bob@example.com", PASSWORD))
    error = login_failure(plan, f"NO [AUTHENTICATIONFAILED] bad password {PASSWORD}", transient=False)
    assert describe_error(error) == "login bob@example.com refused [AUTHENTICATIONFAILED]"
    assert describe_error(imaplib.IMAP4.error("FETCH failed: NO [SERVERBUG] oops")) == "FETCH failed: NO [SERVERBUG] oops"


def test_plain_message_is_utf8_and_refuses_line_breaks_and_nul() -> None:
    assert sasl_plain("jürgen@example.com", "Grüße", "admin") == "admin\0jürgen@example.com\0Grüße".encode()
    for bad in ("a\rb", "a\nb", "a\0b", "\udcfc"):
        with pytest.raises(UnsendableCredentials):
            sasl_plain("bob", bad)
