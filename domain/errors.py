"""Domain errors: each names what was refused and why."""

from __future__ import annotations


class ExplainedError(Exception):
    """An error whose message this program wrote for a person; it never holds a secret.

    Only such messages (and fixed descriptions of everything else) become failure reasons.
    """


class DomainError(ExplainedError):
    """Base of every error the domain raises on purpose."""


class InvalidLogin(DomainError):
    """A login name that cannot be normalised."""


class IllegalTransition(DomainError):
    """An event that the current state does not allow."""

    def __init__(self, what: str, state: str, event: str) -> None:
        super().__init__(f"{what}: {event} is not allowed in state {state!r}")
        self.state = state
        self.event = event


class AccountNotFound(DomainError):
    """No account with that login has been recorded."""

    def __init__(self, login: str) -> None:
        super().__init__(f"no account {login!r} is recorded in the store")
        self.login = login


class AccountAlreadyCreated(DomainError):
    """The target account was already created; a second creation would duplicate it."""


class ConcurrentUpdate(DomainError):
    """Another writer kept changing the same aggregate; the command gave up."""


class AccountBusy(DomainError):
    """Another node holds the account's lease; it may take over only once the lease expires."""

    def __init__(self, login: str, node: str, expires_at: str) -> None:
        super().__init__(
            f"account {login} is being migrated by node {node or '(unnamed)'} until at least {expires_at}; "
            "it is taken over automatically once that node stops renewing its lease"
        )
        self.login = login
        self.node = node


class LeaseLost(DomainError):
    """A node wrote for an account whose lease another node now holds (fencing)."""

    def __init__(self, login: str, node: str, owner: str) -> None:
        super().__init__(
            f"account {login}: node {node or '(unnamed)'} no longer holds the lease, "
            f"node {owner or '(unnamed)'} does; its write was refused"
        )
        self.login = login
        self.node = node
        self.owner = owner


class MigrationRefused(ExplainedError):
    """One account's migration cannot go on; the message is the one line to show."""


class PasswordRefused(ExplainedError):
    """The old server refused the user's password."""


class MailServerError(ExplainedError):
    """A mail server could not do what was asked; `retryable` when asking again later may succeed."""

    def __init__(self, text: str, *, retryable: bool) -> None:
        super().__init__(text)
        self.retryable = retryable


def failure_text(error: BaseException) -> str:
    """One line for a failure, safe to record: our own messages, or a fixed description."""
    if isinstance(error, ExplainedError):
        return str(error)
    if isinstance(error, OSError):
        return f"system error: {error.strerror or type(error).__name__}"
    return f"unexpected {type(error).__name__}"
