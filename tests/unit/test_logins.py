"""The one normal form of a login, and what a login may not contain."""

from __future__ import annotations

import pytest

from mailmigrator.domain.errors import InvalidLogin
from mailmigrator.domain.logins import normalise_login


@pytest.mark.parametrize("login", ["a\x85b@example.com", "a\u2028b@example.com", "a\x1cb@example.com",
                                   "a\u200bb@example.com", "a\u00a0b@example.com"])
def test_logins_with_separators_or_control_characters_are_refused(login: str) -> None:
    with pytest.raises(InvalidLogin):
        normalise_login(login, "example.com")
    assert normalise_login("J\u00fcrgen@Example.com", "") == "j\u00fcrgen@example.com"
