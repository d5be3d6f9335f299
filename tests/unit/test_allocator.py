from __future__ import annotations

import platform

import pytest

from mailmigrator.ops.allocator import bound_allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_allocator_settings_are_accepted_by_glibc() -> None:
    assert bound_allocator() is True
