"""Fixtures for every suite: a test that leaves a thread or a child process
running fails, as watchdog's own suite does."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    threads_before = set(threading.enumerate())
    yield
    leaked_threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    assert not leaked_threads, f"test leaked threads: {leaked_threads}"
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    assert not children, f"test leaked child processes: {children}"
