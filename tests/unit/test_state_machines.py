"""Every legal and every illegal transition of both state machines, walked from the tables."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import pytest

from mailmigrator.domain.errors import AccountAlreadyCreated, IllegalTransition, LeaseLost
from mailmigrator.domain.model import AccountMigration, MigrationRun
from mailmigrator.domain.states import (
    ACCOUNT_STATES,
    ACCOUNT_TRANSITIONS,
    LOCKED_STATES,
    RUN_STATES,
    RUN_TRANSITIONS,
)

ACCOUNT_COMMANDS: dict[str, Callable[[AccountMigration], None]] = {
    "LoginSeen": lambda a: a.see_login("imap", "127.0.0.9", "127.0.0.1"),
    "PasswordVerified": lambda a: a.verify_password("imap-login"),
    "PasswordRejected": lambda a: a.reject_password("authentication failed"),
    "AccountCreated": lambda a: a.create_account(a.login, [], "passwd-file"),
    "AliasesRejected": lambda a: a.reject_aliases([{"address": "ceo@example.com", "reason": "is an account"}]),
    "MigrationStarted": lambda a: a.start_migration([{"source": "INBOX"}], 3, 300, a.attempts + 1),
    "FolderCopied": lambda a: a.copy_folder("INBOX", "INBOX", 7, 3, 3, 300, [], True),
    "MigrationCompleted": lambda a: a.complete_migration(3, 300, 1, 1.5, False),
    # "notice" keeps the lock as the table's states say; old-server locking has its own tests.
    "CopyModeChosen": lambda a: a.choose_copy_mode("notice"),
    "CopyCaughtUp": lambda a: a.catch_up(3, 300, 1, 1.5),
    "SwitchStarted": lambda a: a.start_switch(""),
    "SwitchedOver": lambda a: a.record_switch(0.4, 1, 2),
    "MigrationFailed": lambda a: a.fail_migration("connection reset", True),
    "PostScriptRan": lambda a: a.record_post_script(0, 0.2, False),
    "FinishSwept": lambda a: a.sweep({"INBOX": 1}, 1, 100),
    "CredentialDestroyed": lambda a: a.destroy_credential("swept"),
    "FiltersCopied": lambda a: a.copy_filters([{"name": "main", "bytes": 9, "sha256": "ab" * 32}], "main", "main", []),
    "FiltersNotCopied": lambda a: a.leave_filters("the new server does not offer ManageSieve", []),
    "Expected": lambda a: a.expect("roster import roster.txt"),
    "RemovedFromRoster": lambda a: a.remove_from_roster("roster import --replace roster.txt"),
    "AccountPrepared": lambda a: a.prepare_account(a.login, "passwd-file"),
    "PasswordSet": lambda a: a.set_password("passwd-file"),
    "MailboxesCompared": lambda a: a.record_comparison(False, 1, ["INBOX: 3 on the old server, 2 on the new"], ""),
}

RUN_COMMANDS: dict[str, Callable[[MigrationRun], None]] = {
    "Configured": lambda r: r.configure({"source_host": "old"}),
    "Started": lambda r: r.start("test"),
    "Stopped": lambda r: r.stop("test"),
    "FinishRequested": lambda r: r.request_finish("test"),
    "FinishClaimed": lambda r: r.claim_finish("node-a"),
    "FinishCompleted": lambda r: r.complete_finish(2, 5),
}


def shortest_paths(table: dict[str, dict[str, str]], initial: str) -> dict[str, list[str]]:
    """For each state, the shortest list of event names that reaches it from `initial`."""
    paths = {initial: []}
    queue = deque([initial])
    while queue:
        state = queue.popleft()
        for event_name, target in table[state].items():
            if target not in paths:
                paths[target] = paths[state] + [event_name]
                queue.append(target)
    return paths


# The roster's accounts start before `seen`: from there every state is reachable.
ACCOUNT_PATHS = shortest_paths(ACCOUNT_TRANSITIONS, "expected")
RUN_PATHS = shortest_paths(RUN_TRANSITIONS, "stopped")


def account_in(state: str) -> AccountMigration:
    account = AccountMigration(login="alice@example.com", initial_state="expected")
    for name in ACCOUNT_PATHS[state]:
        ACCOUNT_COMMANDS[name](account)
    assert account.state == state
    return account


def run_in(state: str) -> MigrationRun:
    run = MigrationRun()
    for name in RUN_PATHS[state]:
        RUN_COMMANDS[name](run)
    assert run.state == state
    return run


def test_tables_cover_exactly_the_declared_states_and_commands() -> None:
    assert set(ACCOUNT_TRANSITIONS) == set(ACCOUNT_STATES)
    assert set(RUN_TRANSITIONS) == set(RUN_STATES)
    assert set(ACCOUNT_PATHS) == set(ACCOUNT_STATES), "every account state is reachable"
    assert set(RUN_PATHS) == set(RUN_STATES), "every run state is reachable"
    assert set(shortest_paths(ACCOUNT_TRANSITIONS, "seen")) == set(ACCOUNT_STATES) - {"expected", "withdrawn"}
    used = {e for row in ACCOUNT_TRANSITIONS.values() for e in row}
    assert used == set(ACCOUNT_COMMANDS)
    assert {e for row in RUN_TRANSITIONS.values() for e in row} == set(RUN_COMMANDS)


ACCOUNT_PAIRS = [(s, e) for s in ACCOUNT_STATES for e in ACCOUNT_COMMANDS]


@pytest.mark.parametrize(("state", "event_name"), ACCOUNT_PAIRS)
def test_account_transition(state: str, event_name: str) -> None:
    account = account_in(state)
    before = len(account.collect_events())
    target = ACCOUNT_TRANSITIONS[state].get(event_name)
    if event_name == "AccountCreated" and target is not None and account.created:
        # The table allows creation from `failed`, but never a second account.
        with pytest.raises(AccountAlreadyCreated):
            ACCOUNT_COMMANDS[event_name](account)
        assert account.state == state
        return
    if target is None:
        with pytest.raises(IllegalTransition) as info:
            ACCOUNT_COMMANDS[event_name](account)
        assert info.value.state == state and info.value.event == event_name
        assert account.state == state
        assert account.collect_events() == [], "a refused command records nothing"
        return
    ACCOUNT_COMMANDS[event_name](account)
    assert before >= 1
    assert account.state == target
    assert account.locked == (target in LOCKED_STATES)
    events = account.collect_events()
    assert [type(e).__name__ for e in events] == [event_name]


RUN_PAIRS = [(s, e) for s in RUN_STATES for e in RUN_COMMANDS]


@pytest.mark.parametrize(("state", "event_name"), RUN_PAIRS)
def test_run_transition(state: str, event_name: str) -> None:
    run = run_in(state)
    run.collect_events()
    target = RUN_TRANSITIONS[state].get(event_name)
    if target is None:
        with pytest.raises(IllegalTransition):
            RUN_COMMANDS[event_name](run)
        assert run.state == state
        assert run.collect_events() == []
    else:
        RUN_COMMANDS[event_name](run)
        assert run.state == target
        assert [type(e).__name__ for e in run.collect_events()] == [event_name]


def test_failed_account_resumes_into_the_flow_where_it_stopped() -> None:
    account = account_in("copying")
    account.fail_migration("timeout", True)
    assert account.locked and account.last_error == "timeout"
    account.start_migration([], 0, 0, 2)
    assert account.state == "copying" and account.last_error is None


def test_ids_are_deterministic_per_login() -> None:
    a = AccountMigration(login="bob@example.com")
    b = AccountMigration(login="bob@example.com")
    c = AccountMigration(login="carol@example.com")
    assert a.id == b.id != c.id


def test_folder_checkpoints_accumulate_and_reset_on_new_uidvalidity() -> None:
    account = account_in("copying")
    account.copy_folder("INBOX", "INBOX", 7, 10, 10, 1000, [], False)
    account.copy_folder("INBOX", "INBOX", 7, 15, 5, 500, [{"uid": 12, "reason": "too large"}], True)
    checkpoint = account.folders["INBOX"].to_dict()
    assert {k: checkpoint[k] for k in ("target", "uidvalidity", "highest_uid", "messages", "bytes", "skipped", "done")} == {
        "target": "INBOX", "uidvalidity": 7, "highest_uid": 15, "messages": 15,
        "bytes": 1500, "skipped": 1, "done": True,
    }
    account.copy_folder("INBOX", "INBOX", 8, 3, 3, 30, [], True)
    assert account.folders["INBOX"].messages == 3


def _payload(event: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(event).items() if k not in {"originator_id", "timestamp"}}


def test_checkpoint_of_a_node_without_the_lease_is_refused() -> None:
    account = AccountMigration(login="lease@example.com")
    for name in ("PasswordVerified", "AccountCreated"):
        ACCOUNT_COMMANDS[name](account)
    account.start_migration([{"source": "INBOX"}], 3, 300, 1, "node-a")
    renewed = account.lease_renewed_at
    account.collect_events()
    with pytest.raises(LeaseLost) as info:
        account.copy_folder("INBOX", "INBOX", 7, 3, 3, 300, [], True, node="node-b")
    assert info.value.owner == "node-a" and account.collect_events() == []
    account.copy_folder("INBOX", "INBOX", 7, 3, 3, 300, [], True, node="node-a")
    assert account.lease_renewed_at is not None and renewed is not None
    assert account.lease_renewed_at > renewed, "a checkpoint renews the lease"


def test_only_one_process_claims_a_requested_finish() -> None:
    run = run_in("finishing")
    run.claim_finish("node-a")
    with pytest.raises(IllegalTransition):
        run.claim_finish("node-b")
    assert run.finish_claimed_by == "node-a"
    run.complete_finish(0, 0)
    run.request_finish("console")
    run.claim_finish("node-b")
    assert run.finish_claimed_by == "node-b"


def old_server_account() -> AccountMigration:
    account = AccountMigration(login="kept@example.com")
    account.verify_password("imap-login")
    account.create_account(account.login, [], "passwd-file")
    account.choose_copy_mode("old-server")
    return account


def test_an_old_server_copy_locks_the_account_only_while_it_switches() -> None:
    account = old_server_account()
    seen: list[tuple[str, bool]] = [(account.state, account.locked)]
    account.start_migration([{"source": "INBOX"}], 3, 300, 1, "node-a")
    seen.append((account.state, account.locked))
    account.copy_folder("INBOX", "INBOX", 7, 3, 3, 300, [], True, node="node-a")
    account.finish_copy_pass(3, 300, 1, 1.5, False)
    seen.append((account.state, account.locked))
    account.claim_switch("node-a", None)
    seen.append((account.state, account.locked))
    account.start_migration([{"source": "INBOX"}], 4, 400, 2, "node-a")
    account.copy_folder("INBOX", "INBOX", 7, 4, 1, 100, [], True, node="node-a")
    seen.append((account.state, account.locked))
    account.finish_copy_pass(4, 400, 1, 0.2, False)
    seen.append((account.state, account.locked))
    account.record_switch(0.3, 2, 1)
    assert seen == [("created", False), ("copying", False), ("copied", False), ("switching", True),
                    ("switching", True), ("completed", False)]
    names = [type(e).__name__ for e in account.collect_events()]
    assert names[3:] == ["CopyModeChosen", "MigrationStarted", "FolderCopied", "CopyCaughtUp", "SwitchStarted",
                         "MigrationStarted", "FolderCopied", "MigrationCompleted", "SwitchedOver"]


@pytest.mark.parametrize(("mode", "passwords_only", "ends_with"), [
    ("old-server", False, "CopyCaughtUp"), ("old-server", True, "MigrationCompleted"),
    ("notice", False, "MigrationCompleted"), ("refuse", False, "MigrationCompleted"),
])
def test_the_first_copy_pass_ends_as_the_mode_says(mode: str, passwords_only: bool, ends_with: str) -> None:
    account = AccountMigration(login="pass@example.com")
    account.verify_password("imap-login")
    account.create_account(account.login, [], "passwd-file")
    if account.copy_mode_due(mode):
        account.choose_copy_mode(mode)
    if not passwords_only:
        account.start_migration([{"source": "INBOX"}], 3, 300, 1)
    account.finish_copy_pass(3, 300, 1, 1.5, passwords_only)
    assert type(account.collect_events()[-1]).__name__ == ends_with


def test_a_switch_is_claimed_by_one_node_until_its_lease_runs_out() -> None:
    from datetime import timedelta

    from mailmigrator.domain.errors import AccountBusy

    account = old_server_account()
    account.start_migration([{"source": "INBOX"}], 3, 300, 1, "node-a")
    account.finish_copy_pass(3, 300, 1, 1.5, False)
    renewed = account.lease_renewed_at
    assert renewed is not None
    with pytest.raises(AccountBusy):
        account.claim_switch("node-b", renewed + timedelta(seconds=10), lease_seconds=60)
    account.claim_switch("node-a", renewed + timedelta(seconds=10), lease_seconds=60)
    assert account.state == "switching"
    with pytest.raises(AccountBusy):
        account.claim_switch("node-b", renewed + timedelta(seconds=20), lease_seconds=60)
    # The switching node died: another takes the switch over and finishes it.
    account.claim_switch("node-b", renewed + timedelta(seconds=600), lease_seconds=60)
    assert account.state == "switching" and account.node == "node-b"


@pytest.mark.parametrize(("recorded", "mode", "due"), [
    ("", "old-server", True), ("", "notice", False), ("", "refuse", False), ("old-server", "old-server", False),
    ("old-server", "notice", True), ("notice", "old-server", True), ("refuse", "notice", True),
])
def test_the_copy_mode_is_recorded_for_old_server_copies_and_for_changes(recorded: str, mode: str, due: bool) -> None:
    account = AccountMigration(login="mode@example.com")
    account.verify_password("imap-login")
    account.create_account(account.login, [], "passwd-file")
    if recorded:
        account.choose_copy_mode(recorded)
    assert account.copy_mode_due(mode) == due
