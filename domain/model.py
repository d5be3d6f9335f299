"""Aggregates: one account's migration, and the migration run (the console's buttons).

Payloads are primitives only. A password or a message body never enters an event.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import NotRequired, TypedDict

from eventsourcing.domain import Aggregate, TAggregate, event

from mailmigrator.domain.checkpoints import CheckpointFields, FolderCheckpoint, SkippedMessage, advance
from mailmigrator.domain.errors import AccountAlreadyCreated, AccountBusy, IllegalTransition, LeaseLost
from mailmigrator.domain.filters import RefusedScriptFields, ScriptFields
from mailmigrator.domain.logins import account_id
from mailmigrator.domain.states import (
    ACCOUNT_TRANSITIONS,
    LEASED_STATES,
    RUN_TRANSITIONS,
    completion_event,
    is_locked,
    next_state,
)

RUN_ID = uuid.uuid5(uuid.UUID("6f0b7f36-7c1e-5c34-9a53-3c2a3a0e4d11"), "migration-run")

# A node holds an account while it copies; its checkpoints renew the lease.
DEFAULT_LEASE_SECONDS = 120.0


class PlannedFolderFields(TypedDict):
    """One folder of the copy plan in `MigrationStarted`; older events carry only the source."""

    source: str
    target: NotRequired[str]
    messages: NotRequired[int]
    bytes: NotRequired[int]


class _LeaseEvent(Aggregate.Event):
    """An event of the lease owner: its timestamp (the library's) renews the lease."""

    def mutate(self, aggregate: TAggregate | None) -> TAggregate | None:
        aggregate = super().mutate(aggregate)
        if isinstance(aggregate, AccountMigration):
            aggregate.lease_renewed_at = self.timestamp
        return aggregate


class AccountMigration(Aggregate):
    """The migration of one mail account from the old server to the new one."""

    class Registered(Aggregate.Created):
        login: str
        # "expected" for an account the roster adds before anyone logs in.
        initial_state: str

        # v1 had no initial_state: every account was first recorded at a login.
        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, object]) -> None:
            state["initial_state"] = "seen"

    class Expected(Aggregate.Event):
        """On the roster of accounts the run is expected to move; `source` says how it got there."""

        source: str

    class RemovedFromRoster(Aggregate.Event):
        source: str

    class AccountPrepared(Aggregate.Event):
        """Created on the new server ahead of the first login, with no usable password (a pre-copy)."""

        target_login: str
        provisioner: str

    class PasswordSet(Aggregate.Event):
        """The user's verified password was set on an account prepared without one."""

        provisioner: str

    class MailboxesCompared(Aggregate.Event):
        """A `verify` of old against new: `examples` are the first differences (folder names and counts, no content)."""

        equal: bool
        differences: int
        examples: list[str]
        node: str

    class LoginSeen(Aggregate.Event):
        protocol: str
        client_address: str
        local_address: str

        # v1 had no local_address: it came with multi-domain routing.
        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, object]) -> None:
            state["local_address"] = ""

    class PasswordVerified(Aggregate.Event):
        method: str

    class PasswordRejected(Aggregate.Event):
        reason: str

    class AccountCreated(Aggregate.Event):
        target_login: str
        aliases: list[str]
        provisioner: str

    class AliasesRejected(Aggregate.Event):
        # Each {"address", "reason"}: an alias not applied, left for the admin to decide.
        aliases: list[dict[str, str]]

    class MigrationStarted(_LeaseEvent):
        folders: list[PlannedFolderFields]
        total_messages: int
        total_bytes: int
        attempt: int
        node: str
        # Which engine copies: "dovecot" keeps the old UIDs and UIDVALIDITY (identity), "imap" appends anew.
        engine: str

        # v1 had no node: it came with several nodes sharing one store. v2 had no engine: IMAP was the only one.
        class_version = 3

        @staticmethod
        def upcast_v1_v2(state: dict[str, object]) -> None:
            state["node"] = ""

        @staticmethod
        def upcast_v2_v3(state: dict[str, object]) -> None:
            state["engine"] = "imap"

    class FolderCopied(_LeaseEvent):
        source_folder: str
        target_folder: str
        uidvalidity: int
        highest_uid: int
        messages: int
        bytes: int
        skipped: list[SkippedMessage]
        done: bool
        # Where the target stood at this checkpoint: a resume only fingerprints
        # target messages from target_uidnext on. last_uidl is the POP3 marker.
        target_uidvalidity: int
        target_uidnext: int
        last_uidl: str
        node: str
        # The source folder's HIGHESTMODSEQ when the target's flags last matched it (the Dovecot engine; 0: none).
        highest_modseq: int

        # v2 had no highest_modseq: it came with the Dovecot engine.
        class_version = 3

        @staticmethod
        def upcast_v1_v2(state: dict[str, object]) -> None:
            state["node"] = ""

        @staticmethod
        def upcast_v2_v3(state: dict[str, object]) -> None:
            state["highest_modseq"] = 0

    class CopyModeChosen(Aggregate.Event):
        # Where the users are served while the copy runs: old-server | notice | refuse.
        while_copying: str

    class CopyCaughtUp(_LeaseEvent):
        """The first pass of an old-server copy is done; the switch follows."""

        messages: int
        bytes: int
        folders: int
        duration_seconds: float

    class SwitchStarted(_LeaseEvent):
        node: str

    class MigrationCompleted(Aggregate.Event):
        messages: int
        bytes: int
        folders: int
        duration_seconds: float
        passwords_only: bool

    class SwitchedOver(Aggregate.Event):
        duration_seconds: float
        sessions_closed: int
        delta_messages: int

    class MigrationFailed(Aggregate.Event):
        reason: str
        retryable: bool

    class PostScriptRan(Aggregate.Event):
        exit_status: int
        duration_seconds: float
        timed_out: bool

    class FinishSwept(Aggregate.Event):
        folders: dict[str, int]
        messages: int
        bytes: int
        # Each swept folder's new checkpoint (FolderCheckpoint.to_dict()): the
        # next sweep copies only what arrived after it.
        checkpoints: dict[str, CheckpointFields] | None

        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, object]) -> None:
            state["checkpoints"] = {}

    class CredentialDestroyed(Aggregate.Event):
        reason: str

    class FiltersCopied(Aggregate.Event):
        """The account's Sieve scripts moved over ManageSieve: names, sizes, hashes; never a script's text."""

        scripts: list[ScriptFields]
        # The old server's active script, and the one made active on the new ("" when refused or none).
        old_active: str
        active: str
        # Scripts the new server refused (PUTSCRIPT NO), each with the server's reason.
        refused: list[RefusedScriptFields]

    class FiltersNotCopied(Aggregate.Event):
        """No script moved because a server offers no ManageSieve; `scripts` are those left on the old server."""

        reason: str
        scripts: list[ScriptFields]

    @staticmethod
    def create_id(login: str) -> uuid.UUID:
        return account_id(login)

    @event(Registered)
    def __init__(self, login: str, initial_state: str = "seen") -> None:
        if initial_state not in ("seen", "expected"):
            raise IllegalTransition(f"account {login}", "(new)", f"Registered as {initial_state}")
        self.login = login
        self.state = initial_state
        self.on_roster = False
        # Created ahead of the first login (`AccountPrepared`): the user's password is not yet set there.
        self.password_pending = False
        self.last_compared_equal: bool | None = None
        self.target_login: str | None = None
        self.aliases: list[str] = []
        self.rejected_aliases: list[dict[str, str]] = []
        self.folders: dict[str, FolderCheckpoint] = {}
        self.attempts = 0
        self.last_error: str | None = None
        self.failed_retryable = False
        self.credential_destroyed = False
        self.swept_messages = 0
        # The node that last started (or resumed) the copy, and when it last wrote.
        self.node = ""
        self.lease_renewed_at: datetime | None = None
        # The engine of the last copy: "dovecot" promised identity (old UIDs and UIDVALIDITY), "imap" did not.
        self.engine = "imap"
        # "" for accounts recorded before the choice existed: copied behind the notice.
        self.while_copying = ""
        # Whether the Sieve scripts were moved (or found not movable): a resume does not move them twice.
        self.filters_moved = False

    @property
    def locked(self) -> bool:
        return is_locked(self.state, self.while_copying)

    @property
    def created(self) -> bool:
        return self.target_login is not None

    def allows(self, event_name: str) -> bool:
        """Whether the state machine allows `event_name` now."""
        return next_state(ACCOUNT_TRANSITIONS, self.state, event_name) is not None

    def lease_expires_at(self, lease_seconds: float) -> datetime | None:
        """When the owner's lease runs out; None when no copy was ever started."""
        if self.lease_renewed_at is None:
            return None
        return self.lease_renewed_at + timedelta(seconds=lease_seconds)

    def lease_held_by_other(self, node: str, now: datetime | None, lease_seconds: float) -> bool:
        """Whether a node other than `node` holds a live lease (only copying or failed accounts have one).

        Without `now` a foreign lease counts as live: nothing is taken over on a guess.
        """
        expires = self.lease_expires_at(lease_seconds)
        if self.node == node or expires is None or self.state not in LEASED_STATES:
            return False
        return now is None or now < expires

    def claim_migration(
        self,
        folders: list[PlannedFolderFields],
        total_messages: int,
        total_bytes: int,
        attempt: int,
        node: str,
        now: datetime | None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        engine: str = "imap",
    ) -> None:
        """Start or resume the copy as `node`: refused while another node's lease is live."""
        self._refuse_foreign_lease(node, now, lease_seconds)
        self.start_migration(folders, total_messages, total_bytes, attempt, node, engine)

    def copy_mode_due(self, while_copying: str) -> bool:
        """Whether a copy starting now records its mode: always a change, never a first "notice" (the old default)."""
        if self.while_copying == while_copying or not self.allows("CopyModeChosen"):
            return False
        return bool(self.while_copying) or while_copying == "old-server"

    def claim_switch(self, node: str, now: datetime | None, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        """Start (or resume) the switch as `node`: refused while another node's lease is live."""
        self._refuse_foreign_lease(node, now, lease_seconds)
        self.start_switch(node)

    def _refuse_foreign_lease(self, node: str, now: datetime | None, lease_seconds: float) -> None:
        if self.lease_held_by_other(node, now, lease_seconds):
            expires = self.lease_expires_at(lease_seconds)
            raise AccountBusy(self.login, self.node, expires.isoformat(timespec="seconds") if expires else "?")

    def finish_copy_pass(self, messages: int, bytes: int, folders: int, duration_seconds: float,
                         passwords_only: bool) -> None:
        """End a copy pass: the first pass of an old-server copy catches up, any other completes the migration."""
        if not passwords_only and completion_event(self.state, self.while_copying) == "CopyCaughtUp":
            self.catch_up(messages, bytes, folders, duration_seconds)
        else:
            self.complete_migration(messages, bytes, folders, duration_seconds, passwords_only)

    def check_owner(self, node: str) -> None:
        """Fencing: refuse a write of a node that no longer holds the lease."""
        if self.node and node != self.node:
            raise LeaseLost(self.login, node, self.node)

    def _advance(self, event_name: str) -> None:
        new_state = next_state(ACCOUNT_TRANSITIONS, self.state, event_name)
        if new_state is None:
            raise IllegalTransition(f"account {self.login}", self.state, event_name)
        self.state = new_state

    @event(LoginSeen)
    def see_login(self, protocol: str, client_address: str, local_address: str) -> None:
        self._advance("LoginSeen")

    @event(PasswordVerified)
    def verify_password(self, method: str) -> None:
        self._advance("PasswordVerified")

    @event(PasswordRejected)
    def reject_password(self, reason: str) -> None:
        self._advance("PasswordRejected")

    @event(AccountCreated)
    def create_account(self, target_login: str, aliases: list[str], provisioner: str) -> None:
        if self.allows("AccountCreated") and self.target_login is not None:
            raise AccountAlreadyCreated(
                f"account {self.login}: already created on the new server as {self.target_login}"
            )
        self._advance("AccountCreated")
        self.target_login = target_login
        self.aliases = list(aliases)

    @event(AliasesRejected)
    def reject_aliases(self, aliases: list[dict[str, str]]) -> None:
        self._advance("AliasesRejected")
        self.rejected_aliases += [dict(a) for a in aliases]

    @event(MigrationStarted)
    def start_migration(
        self,
        folders: list[PlannedFolderFields],
        total_messages: int,
        total_bytes: int,
        attempt: int,
        node: str = "",
        engine: str = "imap",
    ) -> None:
        self._advance("MigrationStarted")
        self.attempts = attempt
        self.last_error = None
        self.node = node
        self.engine = engine

    @event(FolderCopied)
    def copy_folder(
        self,
        source_folder: str,
        target_folder: str,
        uidvalidity: int,
        highest_uid: int,
        messages: int,
        bytes: int,
        skipped: list[SkippedMessage],
        done: bool,
        target_uidvalidity: int = 0,
        target_uidnext: int = 0,
        last_uidl: str = "",
        node: str = "",
        highest_modseq: int = 0,
    ) -> None:
        if node != self.node:
            raise LeaseLost(self.login, node, self.node)
        self._advance("FolderCopied")
        later = FolderCheckpoint(
            target=target_folder,
            uidvalidity=uidvalidity,
            highest_uid=highest_uid,
            messages=messages,
            bytes=bytes,
            skipped=len(skipped),
            done=done,
            target_uidvalidity=target_uidvalidity,
            target_uidnext=target_uidnext,
            last_uidl=last_uidl,
            highest_modseq=highest_modseq,
        )
        advance(self.folders, source_folder, later)

    @event(CopyModeChosen)
    def choose_copy_mode(self, while_copying: str) -> None:
        self._advance("CopyModeChosen")
        self.while_copying = while_copying

    @event(CopyCaughtUp)
    def catch_up(self, messages: int, bytes: int, folders: int, duration_seconds: float) -> None:
        self._advance("CopyCaughtUp")
        self.last_error = None

    @event(SwitchStarted)
    def start_switch(self, node: str) -> None:
        self._advance("SwitchStarted")
        self.node = node

    @event(SwitchedOver)
    def record_switch(self, duration_seconds: float, sessions_closed: int, delta_messages: int) -> None:
        self._advance("SwitchedOver")

    @event(MigrationCompleted)
    def complete_migration(
        self,
        messages: int,
        bytes: int,
        folders: int,
        duration_seconds: float,
        passwords_only: bool,
    ) -> None:
        self._advance("MigrationCompleted")
        self.last_error = None

    @event(MigrationFailed)
    def fail_migration(self, reason: str, retryable: bool) -> None:
        self._advance("MigrationFailed")
        self.last_error = reason
        self.failed_retryable = retryable

    @event(PostScriptRan)
    def record_post_script(self, exit_status: int, duration_seconds: float, timed_out: bool) -> None:
        self._advance("PostScriptRan")

    @event(FinishSwept)
    def sweep(
        self,
        folders: dict[str, int],
        messages: int,
        bytes: int,
        checkpoints: dict[str, CheckpointFields] | None = None,
    ) -> None:
        self._advance("FinishSwept")
        self.swept_messages += messages
        for source_folder, checkpoint in (checkpoints or {}).items():
            advance(self.folders, source_folder, FolderCheckpoint.from_dict(checkpoint))

    @event(FiltersCopied)
    def copy_filters(self, scripts: list[ScriptFields], old_active: str, active: str,
                     refused: list[RefusedScriptFields]) -> None:
        self._advance("FiltersCopied")
        self.filters_moved = True

    @event(FiltersNotCopied)
    def leave_filters(self, reason: str, scripts: list[ScriptFields]) -> None:
        self._advance("FiltersNotCopied")
        self.filters_moved = True

    @event(CredentialDestroyed)
    def destroy_credential(self, reason: str) -> None:
        self._advance("CredentialDestroyed")
        self.credential_destroyed = True

    @event(Expected)
    def expect(self, source: str) -> None:
        self._advance("Expected")
        self.on_roster = True

    @event(RemovedFromRoster)
    def remove_from_roster(self, source: str) -> None:
        self._advance("RemovedFromRoster")
        self.on_roster = False

    @event(AccountPrepared)
    def prepare_account(self, target_login: str, provisioner: str) -> None:
        self._advance("AccountPrepared")
        self.target_login = target_login
        self.password_pending = True

    @event(PasswordSet)
    def set_password(self, provisioner: str) -> None:
        self._advance("PasswordSet")
        self.password_pending = False

    @event(MailboxesCompared)
    def record_comparison(self, equal: bool, differences: int, examples: list[str], node: str) -> None:
        self._advance("MailboxesCompared")
        self.last_compared_equal = equal


class MigrationRun(Aggregate):
    """The migration as a whole: what the Start, Stop and Finish buttons record."""

    class Opened(Aggregate.Created):
        pass

    class Configured(Aggregate.Event):
        settings: dict[str, object]

    class Started(Aggregate.Event):
        by: str

    class Stopped(Aggregate.Event):
        by: str

    class FinishRequested(Aggregate.Event):
        by: str

    class FinishClaimed(Aggregate.Event):
        node: str

    class FinishCompleted(Aggregate.Event):
        accounts: int
        messages: int

    @staticmethod
    def create_id() -> uuid.UUID:
        return RUN_ID

    @event(Opened)
    def __init__(self) -> None:
        self.state = "stopped"
        self.settings: dict[str, object] = {}
        self.finish_requested_by = ""
        self.finish_claimed_by = ""

    def allows(self, event_name: str) -> bool:
        return next_state(RUN_TRANSITIONS, self.state, event_name) is not None

    def _advance(self, event_name: str) -> None:
        new_state = next_state(RUN_TRANSITIONS, self.state, event_name)
        if new_state is None:
            raise IllegalTransition("migration run", self.state, event_name)
        self.state = new_state

    @event(Configured)
    def configure(self, settings: dict[str, object]) -> None:
        self._advance("Configured")
        self.settings = dict(settings)

    @event(Started)
    def start(self, by: str) -> None:
        self._advance("Started")

    @event(Stopped)
    def stop(self, by: str) -> None:
        self._advance("Stopped")

    @event(FinishRequested)
    def request_finish(self, by: str) -> None:
        self._advance("FinishRequested")
        self.finish_requested_by = by
        self.finish_claimed_by = ""

    @event(FinishClaimed)
    def claim_finish(self, node: str) -> None:
        """Take on the finish work; refused when another process already took it on."""
        if self.state == "finishing" and self.finish_claimed_by:
            raise IllegalTransition("migration run", f"finishing (claimed by {self.finish_claimed_by})", "FinishClaimed")
        self._advance("FinishClaimed")
        self.finish_claimed_by = node

    @event(FinishCompleted)
    def complete_finish(self, accounts: int, messages: int) -> None:
        self._advance("FinishCompleted")
