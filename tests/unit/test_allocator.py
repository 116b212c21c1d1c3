"""The job process's malloc settings (service.worker.allocator)."""

from __future__ import annotations

import platform

import pytest

from service.worker.allocator import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_the_settings_every_time() -> None:
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # and again: mallopt only sets two values
