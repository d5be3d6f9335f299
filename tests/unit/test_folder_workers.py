"""How many connections an account's copy opens: one for a small account, more only for what is left to copy."""

from __future__ import annotations

from mailmigrator.adapters.mail.copier import folder_workers

MIB = 1024 * 1024


def test_a_small_account_is_copied_over_the_planning_connections_alone() -> None:
    assert folder_workers(100_000, folders=6, most=3, bytes_per_connection=8 * MIB) == 1
    assert folder_workers(0, folders=6, most=3, bytes_per_connection=8 * MIB) == 1


def test_more_connections_open_with_what_is_left_to_copy_up_to_the_folders_and_the_limit() -> None:
    assert folder_workers(8 * MIB, folders=6, most=3, bytes_per_connection=8 * MIB) == 2
    assert folder_workers(100 * MIB, folders=6, most=3, bytes_per_connection=8 * MIB) == 3
    assert folder_workers(100 * MIB, folders=2, most=3, bytes_per_connection=8 * MIB) == 2
    assert folder_workers(100 * MIB, folders=0, most=3, bytes_per_connection=8 * MIB) == 1
