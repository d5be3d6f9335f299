"""Admin authentication for the console: the password hash file, sessions, CSRF tokens, throttling.

The admin password is stored only as an argon2id hash (salted by argon2) in
the file named by `[admin] password_file`. Sessions live in memory: a restart
of `serve` logs every admin out, which is the safe direction.
"""

from __future__ import annotations

import hmac
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from mailmigrator.adapters.proxy.throttle import Attempt, LoginThrottle
from mailmigrator.ops.config import ConfigError, read_secret_file

SESSION_IDLE_SECONDS = 30 * 60
SESSION_MAX_SECONDS = 12 * 60 * 60
ADMIN_LOGIN = "admin"

_hasher = PasswordHasher()  # argon2id with the library's current recommended cost


def hash_admin_password(password: str) -> str:
    """The argon2id hash string of `password`, with a fresh random salt."""
    if not password:
        raise ValueError("empty admin password")
    return _hasher.hash(password)


def write_password_file(path: Path, password: str) -> None:
    """Write the hash of `password` to `path` (mode 0600), replacing any older one atomically."""
    text = hash_admin_password(password) + "\n"
    path = path.absolute()
    fd, tmp = tempfile.mkstemp(prefix=".admin-password.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class AdminPassword:
    """The admin password's hash, read from the password file."""

    hash: str = field(repr=False)

    @classmethod
    def from_file(cls, path: Path | None) -> AdminPassword:
        text = read_secret_file(path, "[admin] password_file")
        if not text.startswith("$argon2"):
            raise ConfigError(
                f"[admin] password_file {path} does not hold an argon2 hash; "
                "write one with `mailmigrator admin-password FILE`"
            )
        return cls(text.strip())

    def matches(self, password: str) -> bool:
        """Whether `password` is the admin password (slow on purpose: argon2)."""
        try:
            return _hasher.verify(self.hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


@dataclass
class Session:
    token: str = field(repr=False)
    csrf_token: str = field(repr=False)
    created: float
    last_seen: float


@dataclass
class Sessions:
    """Logged-in admin sessions, expiring after idleness and after a maximum age."""

    idle_seconds: float = SESSION_IDLE_SECONDS
    max_seconds: float = SESSION_MAX_SECONDS
    clock: Callable[[], float] = time.monotonic
    _by_token: dict[str, Session] = field(default_factory=dict)

    def open(self) -> Session:
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        self._by_token[session.token] = session
        self._expire(now)
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session of `token`, refreshing its idle timer; None when unknown or expired."""
        if not token:
            return None
        now = self.clock()
        session = self._by_token.get(token)
        if session is None:
            return None
        if self._expired(session, now):
            del self._by_token[token]
            return None
        session.last_seen = now
        return session

    def close(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_seen > self.idle_seconds or now - session.created > self.max_seconds

    def _expire(self, now: float) -> None:
        for token in [t for t, s in self._by_token.items() if self._expired(s, now)]:
            del self._by_token[token]


def csrf_matches(session: Session, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(session.csrf_token.encode(), presented.encode())


# Addresses whose wrong passwords never touch the budget "in all": the console's own host.
LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1"})
KNOWN_GOOD_ADDRESSES = 64
# Each argon2 check holds ~64 MiB; a flood of logins waits here instead of exhausting memory.
ARGON2_CONCURRENCY = 2


@dataclass
class AdminThrottle:
    """Wrong admin passwords: 5 per client address and 20 in all per 5 minutes, then refused.

    The budget "in all" binds strangers only: loopback and the last addresses an
    admin logged in from keep just their own budget of 5, which no other
    address can use up, so no stranger can lock the admin out.
    """

    limits: LoginThrottle = field(default_factory=lambda: LoginThrottle(
        max_per_login=20, max_per_address=5, window_seconds=300.0, max_in_flight_per_address=5))
    _known_good: dict[str, None] = field(default_factory=dict)

    async def begin(self, address: str) -> Attempt | str:
        """Reserve a slot for one password check from `address`, or say why not (see `LoginThrottle.begin`)."""
        in_all = () if self.trusted(address) else (ADMIN_LOGIN,)
        return await self.limits.begin(in_all, address)

    def trusted(self, address: str) -> bool:
        return address in LOOPBACK_ADDRESSES or address in self._known_good

    def logged_in(self, address: str) -> None:
        self._known_good.pop(address, None)
        self._known_good[address] = None
        while len(self._known_good) > KNOWN_GOOD_ADDRESSES:
            del self._known_good[next(iter(self._known_good))]


def admin_throttle(clock: Callable[[], float] = time.monotonic) -> AdminThrottle:
    return AdminThrottle(LoginThrottle(max_per_login=20, max_per_address=5, window_seconds=300.0,
                                       max_in_flight_per_address=5, clock=clock))
