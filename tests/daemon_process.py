"""One `bmsync run` process started by a test or a bench: the tests in
tests/integration and tests/ha and the scripts in bench/ drive the daemon
through this, as an administrator would (the process, its control socket
through `bmsync status`, its signals). It only ever signals the pid it
started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STOP_TIMEOUT_S = 30
POLL_S = 0.05


class DaemonProcess:
    def __init__(
        self,
        conf: Path,
        log_path: Path,
        *,
        netns: str | None = None,
        env: dict[str, str] | None = None,
        log_level: str = "info",
        name: str = "bmsync",
        launcher: Sequence[str] = (),
    ) -> None:
        """``netns``: run the daemon inside that network namespace (its CLI
        still reaches it through the control socket, from outside).
        ``launcher``: instead, an argv prefix that runs it inside a test node
        (``nsenter --net=... --mount=...``, tests/ha/nodes.py): ``ip netns
        exec`` would give it a mount namespace of its own, not the node's."""
        assert not (netns and launcher), "netns or launcher, not both"
        self.conf = conf
        self.log_path = log_path
        self.netns = netns
        self.launcher = tuple(launcher)
        self.env = env
        self.log_level = log_level
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.started_wall = 0.0

    def cli_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bmsync", "-c", str(self.conf), *args]

    def start(self) -> DaemonProcess:
        inside = ["ip", "netns", "exec", self.netns] if self.netns else list(self.launcher)
        self.started_wall = time.time()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*inside, *self.cli_argv("--log-level", self.log_level, "run")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, **(self.env or {})},
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> None:
        """Fail with the daemon's log if it is not running."""
        if not self.running():
            code = None if self.process is None else self.process.returncode
            raise AssertionError(f"{self.name} is not running (exit {code}):\n{self.log()}")

    def send_signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, as a crash would; waits for the process."""
        if self.process is not None:
            self.process.kill()
            self.exit_code, self.process = self.process.wait(), None

    def stop(self) -> int | None:
        """SIGTERM, as systemd does; SIGKILL if it does not end in time.
        The exit code (of the last run if it was stopped already; None if
        it never ran)."""
        if self.process is None:
            return self.exit_code
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.exit_code, self.process = self.process.returncode, None
        return self.exit_code

    def bmsync(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """``bmsync -c CONF ARGS`` for this daemon's node."""
        return subprocess.run(
            self.cli_argv(*args), capture_output=True, text=True, timeout=timeout_s
        )

    def status(self) -> dict[str, Any]:
        """``bmsync status --json``, with its exit code as ``exit_code``."""
        done = self.bmsync("status", "--json")
        try:
            answer: dict[str, Any] = json.loads(done.stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"status printed no JSON: {done.stdout}{done.stderr}") from exc
        answer["exit_code"] = done.returncode
        return answer

    def wait_state(self, state: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.check()
            last = self.status()
            if last["state"] == state:
                return last
            time.sleep(POLL_S)
        raise AssertionError(f"{self.name}: state {state!r} not reached: {last}\n{self.log()}")

    def wait_reason(self, state: str, reason: str, timeout_s: float = 60) -> dict[str, Any]:
        """Until the daemon is in ``state`` for ``reason`` (a daemon with a
        VIP is first suspended as "not checked yet", until the check answers)."""
        deadline = time.monotonic() + timeout_s
        while reason not in str((status := self.wait_state(state, timeout_s))["reason"]):
            assert time.monotonic() < deadline, f"{status}\n{self.log()}"
            time.sleep(POLL_S)
        return status

    def wait_another_handshake(self, status: dict[str, Any], timeout_s: float = 60) -> None:
        """Until the daemon has asked the peer again since ``status`` (a
        suspended daemon asks every reconnect_max_s)."""
        deadline = time.monotonic() + timeout_s
        while self.status()["last_contact"] == status["last_contact"]:
            self.check()
            assert time.monotonic() < deadline, f"the daemon did not ask again\n{self.log()}"
            time.sleep(0.1)

    def log(self, chars: int = 5000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"
