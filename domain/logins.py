"""Login names: one normal form used everywhere (events, ids, projections, CLI)."""

from __future__ import annotations

import unicodedata
import uuid

from mailmigrator.domain.errors import InvalidLogin

# Fixed namespace so that the same login always maps to the same aggregate id,
# on every node and after every restart.
ACCOUNT_NAMESPACE = uuid.UUID("6f0b7f36-7c1e-5c34-9a53-3c2a3a0e4d11")

_FORBIDDEN = set(' \t\r\n\x00"()<>,;:\\[]*%')


def normalise_login(raw: str, primary_domain: str) -> str:
    """Return the canonical form of a login: lower-cased, with a domain.

    A bare username gets `primary_domain`. Raises `InvalidLogin` for an
    empty name, an empty domain, or characters no mail login may contain.
    """
    login = raw.strip().lower()
    if not login:
        raise InvalidLogin("empty login")
    if "@" not in login:
        domain = primary_domain.strip().lower()
        if not domain:
            raise InvalidLogin(
                f"login {login!r} has no domain and no primary_domain is configured"
            )
        login = f"{login}@{domain}"
    local, _, domain = login.rpartition("@")
    if not local or not domain or "@" in local:
        raise InvalidLogin(f"login {login!r} is not of the form user@domain")
    if _FORBIDDEN.intersection(login) or any(_is_separator_or_control(c) for c in login):
        raise InvalidLogin(f"login {login!r} contains a character logins may not have")
    return login


def is_map_key(login: str) -> bool:
    """Whether `login` can be a key line of a Postfix map as it is: a normalised `user@domain`, no blank,
    no control character, no `#` that would make the line a comment."""
    try:
        return normalise_login(login, "") == login and not login.startswith("#")
    except InvalidLogin:
        return False


def _is_separator_or_control(char: str) -> bool:
    # Control characters and Unicode line/paragraph/space separators would split or
    # disguise a line in the passwd-file, the alias map or a log.
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Zs")


def account_id(login: str) -> uuid.UUID:
    """The aggregate id of an account: uuid5 of its normalised login."""
    return uuid.uuid5(ACCOUNT_NAMESPACE, login)


def local_part(login: str) -> str:
    return login.rpartition("@")[0]


def domain_part(login: str) -> str:
    return login.rpartition("@")[2]
