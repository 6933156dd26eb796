"""A running `bmsync run` between the two trees of a Pair (the shared
harness of tests/daemon_process.py), and what tests wait for around it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.daemon_process import DaemonProcess
from tests.helpers import walk
from tests.integration.conftest import Pair


class RunningDaemon(DaemonProcess):
    """The active node's daemon of a Pair, started."""

    def __init__(self, pair: Pair, env: dict[str, str] | None = None) -> None:
        super().__init__(pair.active_conf, pair.base / "daemon.log", env=env)
        self.pair = pair
        self.start()


def converge(pair: Pair, timeout_s: float = 2.0) -> float:
    """Wait until both trees are identical (content, mode, owner, mtime,
    link targets); returns how long it took. Fails after ``timeout_s``."""
    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        local, peer = walk(pair.active), walk(pair.passive)
        if local == peer:
            return time.monotonic() - start
        if time.monotonic() > deadline:
            diff = sorted(k for k in local.keys() | peer.keys() if local.get(k) != peer.get(k))
            raise AssertionError(f"not converged after {timeout_s} s: {diff[:20]}")
        time.sleep(0.02)


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def descendants(pid: int) -> list[int]:
    """Processes below ``pid`` (ours: started by a test), nearest first."""
    out: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop(0)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        out.extend(int(c) for c in children)
        stack.extend(int(c) for c in children)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def agents(pair: Pair) -> list[int]:
    """The passive node's agent processes (below the sshd the test started)."""
    assert pair.sshd.process is not None
    return [p for p in descendants(pair.sshd.process.pid) if " agent" in cmdline(p)]


def take_the_passive_away(pair: Pair) -> None:
    """The passive node goes away with its open sessions: its sshd stopped,
    then its agents killed (by the pids this test's sshd started)."""
    sessions = agents(pair)
    pair.sshd.stop()
    for pid in sessions:
        os.kill(pid, signal.SIGKILL)
