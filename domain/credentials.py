"""Login credentials as a value whose printed forms never show the password."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Credentials:
    """A login name and its password; `repr` and `str` hide the password."""

    login: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(login={self.login!r}, password='***')"

    def __str__(self) -> str:
        return self.login
