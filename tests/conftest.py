"""Session-wide real Dovecot servers and per-test unique logins.

The server fixtures are synchronous on purpose: pytest-trio async fixtures are
function-scoped, and these servers are started once per session.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
import trustme

from testbed import DovecotServer, make_new_server, make_old_server

_DOVECOT_FIXTURES = {"old_server", "new_server"}
_login_numbers = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a Dovecot server fixture with ``dovecot``."""
    for item in items:
        if _DOVECOT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.dovecot)


@pytest.fixture(scope="session")
def certs() -> trustme.CA:
    """The CA that signs both test servers' certificates."""
    return trustme.CA()


@pytest.fixture(scope="session")
def old_server(tmp_path_factory: pytest.TempPathFactory, certs: trustme.CA) -> Iterator[DovecotServer]:
    """Source Dovecot: IMAP(S) + POP3(S), separator ".", prefix "INBOX.", master user ``admin``."""
    with make_old_server(tmp_path_factory.mktemp("old-dovecot"), certs) as server:
        yield server


@pytest.fixture(scope="session")
def new_server(tmp_path_factory: pytest.TempPathFactory, certs: trustme.CA) -> Iterator[DovecotServer]:
    """Target Dovecot: IMAP + STARTTLS, separator "/", master user ``master``, service-written passwd-file."""
    with make_new_server(tmp_path_factory.mktemp("new-dovecot"), certs) as server:
        yield server


@pytest.fixture
def fresh_login() -> Callable[[], str]:
    """Makes logins no other test in this session uses, for tests needing several."""
    return lambda: f"u{next(_login_numbers)}@example.com"


@pytest.fixture
def unique_login(fresh_login: Callable[[], str]) -> str:
    """A login no other test in this session uses."""
    return fresh_login()
