"""A running `bmsync run` between the two trees of a Pair, driven as an
administrator would: the process, its control socket, its signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import walk
from tests.integration.conftest import Pair


class RunningDaemon:
    def __init__(self, pair: Pair, env: dict[str, str] | None = None) -> None:
        self.pair = pair
        self.log_path = pair.base / "daemon.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bmsync",
                "-c",
                str(pair.active_conf),
                "--log-level",
                "info",
                "run",
            ],
            stdout=self._log,
            stderr=self._log,
            env={**os.environ, **(env or {})},
        )

    def status(self) -> dict[str, Any]:
        done = self.pair.bmsync("status", "--json")
        answer: dict[str, Any] = json.loads(done.stdout)
        answer["exit_code"] = done.returncode
        return answer

    def wait_state(self, state: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"daemon exited: {self.log()}"
            last = self.status()
            if last["state"] == state:
                return last
            time.sleep(0.05)
        raise AssertionError(f"state {state!r} not reached: {last}\n{self.log()}")

    def wait_reason(self, state: str, reason: str, timeout_s: float = 60) -> dict[str, Any]:
        """Until the daemon is in ``state`` for ``reason`` (a daemon with a
        VIP is first suspended as "not checked yet", until the check answers)."""
        deadline = time.monotonic() + timeout_s
        while reason not in str((status := self.wait_state(state, timeout_s))["reason"]):
            assert time.monotonic() < deadline, f"{status}\n{self.log()}"
            time.sleep(0.05)
        return status

    def wait_another_handshake(self, status: dict[str, Any], timeout_s: float = 60) -> None:
        """Until the daemon has asked the peer again since ``status`` (a
        suspended daemon asks every reconnect_max_s)."""
        deadline = time.monotonic() + timeout_s
        while self.status()["last_contact"] == status["last_contact"]:
            assert self.process.poll() is None, f"daemon exited: {self.log()}"
            assert time.monotonic() < deadline, f"the daemon did not ask again\n{self.log()}"
            time.sleep(0.1)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


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
