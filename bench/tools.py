"""The tools being compared, each started and stopped by its own pid.

- ``Link``: the private sshd on 127.0.0.1 (tests/sshd.py) and its two client
  keys: bmsync's, restricted to the agent by a forced command, and a plain
  one for rsync and lsyncd.
- ``BmsyncDaemon``: ``bmsync run`` with the default settings (preset none,
  paths ["/"]), its passive agent reached through that forced command.
- ``Lsyncd``: lsyncd 2.2.3 in ``default.rsyncssh`` mode, ``-nodaemon``.
- ``rsync_once``: one ``rsync -a`` over the same sshd.

rsync and lsyncd get the flags that make them copy what bmsync copies
(``-a -A -X --numeric-ids``: ACLs, xattrs, numeric owners), so that the
work compared is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from bench import proc
from bmsync.core.errors import BmsyncError
from bmsync.service import control
from tests.daemon_process import DaemonProcess
from tests.sshd import Sshd, agent_command, keygen, write_config

STOP_TIMEOUT_S = 30.0
# structlog's console lines: "2026-01-01T00:00:00.000000Z [info     ] event   key=value ..."
LOG_LINE = re.compile(r"^(?P<time>\S+Z) \[\w+\s*\] (?P<event>\w+)\s*(?P<rest>.*)$")
KEY_VALUE = re.compile(r"(\w+)=(\S+)")
GAP_S = 0.1  # quiet time after a tool settled, before the next change
STATUS_POLL_S = 0.02
RSYNC_FLAGS = ("-a", "-A", "-X", "--numeric-ids")


class ToolError(Exception):
    pass


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def stop_process(proc_: subprocess.Popen[bytes] | None, what: str) -> int | None:
    """SIGTERM by pid, wait, SIGKILL if it lingers; its exit code."""
    if proc_ is None:
        return None
    if proc_.poll() is None:
        proc_.send_signal(signal.SIGTERM)
        try:
            proc_.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"{what} (pid {proc_.pid}) ignored SIGTERM; killing it", file=sys.stderr)
            proc_.kill()
            proc_.wait(STOP_TIMEOUT_S)
    return proc_.returncode


def stop_leftovers(before: dict[int, list[str]]) -> None:
    """SIGTERM what a tool we started had spawned and left behind when it
    stopped: the pids seen just before, still running the same command."""
    for pid, cmd in before.items():
        if cmd and proc.cmdline(pid) == cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


# -- the SSH link ----------------------------------------------------------------


@dataclass
class Link:
    sshd: Sshd
    plain_key: Path  # rsync's and lsyncd's key (no forced command)
    plain_pub: str

    @classmethod
    def create(cls, base: Path) -> Link:
        sshd = Sshd.create(base)
        plain = base / "plain_key"
        pub = keygen(plain)
        sshd.authorized_keys.write_text(f"{pub}\n")  # bmsync's key joins in authorize()
        return cls(sshd, plain, pub)

    @property
    def port(self) -> int:
        return self.sshd.port

    def authorize(self, passive_conf: Path) -> None:
        """authorized_keys: bmsync's key forced to run the agent with
        ``passive_conf``, then the plain key (sshd reads it per login)."""
        forced = agent_command(passive_conf)
        self.sshd.authorized_keys.write_text(
            f'command="{forced}",restrict {self.sshd.client_pub}\n{self.plain_pub}\n'
        )

    def ssh_options(self) -> dict[str, str]:
        return {
            "UserKnownHostsFile": str(self.sshd.known_hosts),
            "StrictHostKeyChecking": "yes",
            "BatchMode": "yes",
            "IdentitiesOnly": "yes",
        }

    def ssh_command(self) -> list[str]:
        cmd = ["ssh", "-p", str(self.port), "-i", str(self.plain_key)]
        for key, value in self.ssh_options().items():
            cmd += ["-o", f"{key}={value}"]
        return cmd

    def rsh(self) -> str:
        """The ssh command for ``rsync -e`` (our paths have no spaces)."""
        return " ".join(self.ssh_command())


# -- the daemons ---------------------------------------------------------------------


class Daemon(Protocol):
    name: str
    src: Path
    dst: Path

    @property
    def pid(self) -> int: ...

    def check(self) -> None:
        """Raise ToolError if the daemon died."""

    def settle(self) -> None:
        """Wait until nothing is in flight, then a short quiet gap."""

    def describe(self) -> str: ...


@dataclass
class BmsyncDaemon:
    name: str
    link: Link
    src: Path  # the active node's root
    dst: Path  # the passive node's root
    work: Path
    log_level: str = "info"
    active_conf: Path = field(init=False)
    passive_conf: Path = field(init=False)
    log: Path = field(init=False)
    daemon: DaemonProcess = field(init=False)

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.active_conf = write_config(
            self.work / "active.yaml", "bm1", self.src, self.work / "state1", self.link.sshd
        )
        self.passive_conf = write_config(
            self.work / "passive.yaml", "bm2", self.dst, self.work / "state2"
        )
        self.log = self.work / "daemon.log"
        self.daemon = DaemonProcess(
            self.active_conf, self.log, log_level=self.log_level, name=self.name
        )

    def cli(self, *args: str) -> list[str]:
        return self.daemon.cli_argv(*args)

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.daemon.process

    @property
    def started_wall(self) -> float:
        return self.daemon.started_wall

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ToolError(f"{self.name} is not running")
        return self.process.pid

    def start(self) -> None:
        self.link.authorize(self.passive_conf)
        self.daemon.start()

    def check(self) -> None:
        if not self.daemon.running():
            code = None if self.process is None else self.process.returncode
            raise ToolError(f"{self.name} exited ({code}); its log:\n{log_tail(self.log)}")

    def status(self, timeout_s: float = 30.0) -> dict[str, Any] | None:
        """The daemon's status, straight from its control socket (what
        ``bmsync status --json`` prints, without starting a Python)."""
        sock = self.work / "bm1.sock"
        try:
            return asyncio.run(control.request(sock, "status", timeout_s))
        except (BmsyncError, OSError):
            return None

    def status_cli(self) -> dict[str, Any] | None:
        done = subprocess.run(
            self.cli("status", "--json"), capture_output=True, text=True, timeout=60
        )
        try:
            answer: dict[str, Any] = json.loads(done.stdout)
        except json.JSONDecodeError:
            return None
        return answer

    def wait_syncing(self, timeout_s: float) -> float:
        """Seconds from now until the state is "syncing"."""
        t0 = time.perf_counter()
        deadline = t0 + timeout_s
        last: dict[str, Any] | None = None
        while time.perf_counter() < deadline:
            self.check()
            last = self.status()
            if last is not None and last.get("state") == "syncing":
                return time.perf_counter() - t0
            time.sleep(STATUS_POLL_S)
        raise ToolError(
            f"{self.name} not 'syncing' within {timeout_s:g} s "
            f"({'no answer' if last is None else last.get('state')}); log:\n{log_tail(self.log)}"
        )

    def settle(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.check()
            s = self.status()
            if s is not None and s.get("queued") == 0 and s.get("lag_s") == 0:
                break
            time.sleep(STATUS_POLL_S)
        time.sleep(GAP_S)

    def resync_cli(self, timeout_s: float) -> tuple[float, dict[str, Any] | str]:
        """``bmsync -c CONF resync --json`` (through the daemon): wall seconds,
        and its JSON report (or its output when it is not JSON)."""
        t0 = time.perf_counter()
        done = subprocess.run(
            self.cli("resync", "--json"), capture_output=True, text=True, timeout=timeout_s
        )
        took = time.perf_counter() - t0
        if done.returncode != 0:
            raise ToolError(f"resync exited {done.returncode}: {done.stdout}{done.stderr}")
        try:
            return took, json.loads(done.stdout)
        except json.JSONDecodeError:
            return took, done.stdout.strip()

    def log_events(self, since_wall: float) -> list[tuple[float, str, dict[str, str]]]:
        """The daemon's log events (console format) from ``since_wall`` on."""
        events = []
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        for line in lines:
            m = LOG_LINE.match(line)
            if m is None:
                continue
            when = datetime.fromisoformat(m["time"].replace("Z", "+00:00")).timestamp()
            if when >= since_wall:
                fields = dict(KEY_VALUE.findall(m["rest"]))
                events.append((when, m["event"], fields))
        return events

    def startup_breakdown(self) -> dict[str, float]:
        """Where the last start went, from the daemon's own log: ms from the
        process start to each first ``daemon_started``, ``connected``,
        ``session_open`` and ``reconciled``, and the reconcile's duration."""
        out: dict[str, float] = {}
        for when, event, fields in self.log_events(self.started_wall):
            key = f"{event}_ms"
            if event in ("daemon_started", "connected", "session_open", "reconciled"):
                out.setdefault(key, round((when - self.started_wall) * 1000, 1))
            if event == "reconciled" and "reconcile_duration_ms" not in out:
                out["reconcile_duration_ms"] = float(fields.get("duration_ms", "nan"))
        return out

    def agent_pids(self) -> list[int]:
        sshd = self.link.sshd.process
        if sshd is None:
            return []
        return [
            p
            for p in proc.descendants(sshd.pid)
            if "bmsync" in " ".join(proc.cmdline(p)) and "agent" in proc.cmdline(p)
        ]

    def stop(self) -> int | None:
        return self.daemon.stop()

    def describe(self) -> str:
        return "bmsync run (defaults)"


@dataclass
class Lsyncd:
    name: str
    link: Link
    src: Path
    dst: Path
    work: Path
    delay_s: float | None  # None: lsyncd's default (15 s for rsyncssh)
    process: subprocess.Popen[bytes] | None = None
    conf: Path = field(init=False)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = self.work / "lsyncd.log"
        self.conf = self.work / "lsyncd.conf.lua"
        options = ", ".join(f'{k} = "{v}"' for k, v in self.link.ssh_options().items())
        extra = ", ".join(f'"{flag}"' for flag in ("-A", "-X", "--numeric-ids"))
        delay = "" if self.delay_s is None else f"    delay = {self.delay_s:g},\n"
        self.conf.write_text(
            "settings {\n"
            "    nodaemon = true,\n"
            f'    logfile = "{self.log}",\n'
            f'    statusFile = "{self.work / "lsyncd.status"}",\n'
            '    inotifyMode = "CloseWrite or Modify",\n'
            "}\n"
            "sync {\n"
            "    default.rsyncssh,\n"
            f'    source = "{self.src}/",\n'
            '    host = "127.0.0.1",\n'
            f'    targetdir = "{self.dst}/",\n'
            f"{delay}"
            f"    rsync = {{ archive = true, _extra = {{ {extra} }} }},\n"
            f"    ssh = {{ port = {self.link.port}, identityFile = "
            f'"{self.link.plain_key}", options = {{ {options} }} }},\n'
            "}\n"
        )

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ToolError(f"{self.name} is not running")
        return self.process.pid

    def start(self) -> None:
        with open(self.work / "lsyncd.out", "ab") as out:
            self.process = subprocess.Popen(
                ["lsyncd", "-nodaemon", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    def check(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise ToolError(
                f"{self.name} exited ({code}); its log:\n{log_tail(self.log)}\n"
                f"{log_tail(self.work / 'lsyncd.out')}"
            )

    def wait_initial(self, timeout_s: float) -> float:
        """Seconds from now until lsyncd logs that its startup rsync finished."""
        t0 = time.perf_counter()
        deadline = t0 + timeout_s
        while time.perf_counter() < deadline:
            self.check()
            self.children()
            try:
                text = self.log.read_text(errors="replace")
            except FileNotFoundError:
                text = ""
            if "Startup of" in text and "finished" in text:
                return time.perf_counter() - t0
            time.sleep(0.005)
        raise ToolError(f"{self.name}: no startup within {timeout_s:g} s:\n{log_tail(self.log)}")

    def children(self) -> list[int]:
        return proc.descendants(self.pid)

    def settle(self) -> None:
        """Until lsyncd has no child (rsync/ssh) for two looks in a row."""
        deadline = time.monotonic() + 60
        quiet = 0
        while time.monotonic() < deadline and quiet < 2:
            self.check()
            quiet = 0 if self.children() else quiet + 1
            time.sleep(0.01)
        time.sleep(GAP_S)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        spawned = {p: proc.cmdline(p) for p in proc.descendants(self.process.pid)}
        code = stop_process(self.process, self.name)
        self.process = None
        stop_leftovers(spawned)
        return code

    def describe(self) -> str:
        delay = "default (15 s)" if self.delay_s is None else f"{self.delay_s:g}"
        return f"lsyncd {lsyncd_version()} rsyncssh, delay {delay}"


def lsyncd_version() -> str:
    try:
        out = subprocess.run(["lsyncd", "-version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip().removeprefix("Version:").strip() or "?"


# -- one-shot rsync ------------------------------------------------------------------


@dataclass(frozen=True)
class RsyncRun:
    seconds: float
    stdout: str


def rsync_once(
    link: Link, src: str, dst: str, timeout_s: float, extra: tuple[str, ...] = ("--delete",)
) -> RsyncRun:
    """``rsync -a -A -X --numeric-ids [--delete] -e ssh... SRC 127.0.0.1:DST``."""
    cmd = [
        "rsync",
        *RSYNC_FLAGS,
        *extra,
        "-e",
        link.rsh(),
        src,
        f"root@127.0.0.1:{dst}",
    ]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"rsync did not finish within {timeout_s:g} s") from exc
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise ToolError(f"rsync exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return RsyncRun(took, done.stdout)


def rsync_version() -> str:
    try:
        out = subprocess.run(["rsync", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    first = out.stdout.splitlines()[0] if out.stdout else "?"
    return first.removeprefix("rsync  version").strip().split()[0]
