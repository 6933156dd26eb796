"""contrib/ocf/bmsync, the Pacemaker resource agent: Debian's ocf-tester
(resource-agents) passes it, and each of its actions returns the OCF code
Pacemaker acts on for each state of a real `bmsync run` it starts: not
running 7, started (passive, standby) 0, promoted 8, suspended by the
split-brain guard 9, demoted 0, stopped 7. The node's peer is down
throughout: an active node without its peer is `disconnected`, still the
master."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.lone_node import BMSYNC, bmsync, status, write_lone_node

AGENT = Path(__file__).parents[2] / "contrib" / "ocf" / "bmsync"
OCF_ROOT = Path("/usr/lib/ocf")
SHELLFUNCS = OCF_ROOT / "lib" / "heartbeat" / "ocf-shellfuncs"
OCF_TESTER = shutil.which("ocf-tester") or "/usr/sbin/ocf-tester"
DTD = Path("/usr/share/resource-agents/ra-api-1.dtd")

OCF_SUCCESS = 0
OCF_ERR_GENERIC = 1
OCF_ERR_INSTALLED = 5
OCF_ERR_CONFIGURED = 6
OCF_NOT_RUNNING = 7
OCF_RUNNING_MASTER = 8
OCF_FAILED_MASTER = 9

pytestmark = pytest.mark.skipif(
    not (Path(OCF_TESTER).exists() and SHELLFUNCS.exists() and shutil.which("xmllint")),
    reason="ocf-tester, ocf-shellfuncs or xmllint is missing: "
    "apt-get install resource-agents libxml2-utils",
)


@dataclass
class Resource:
    """The agent configured for one node, as Pacemaker runs it."""

    conf: Path
    pidfile: Path
    logfile: Path

    def params(self) -> dict[str, str]:
        return {
            "config": str(self.conf),
            "binary": str(BMSYNC),
            "pidfile": str(self.pidfile),
            "logfile": str(self.logfile),
        }

    def run(
        self, action: str, interval_ms: int = 10000, timeout_ms: int = 60000, **over: str
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "OCF_ROOT": str(OCF_ROOT),
            "OCF_RESOURCE_INSTANCE": "bmsync",
            "OCF_RESKEY_CRM_meta_interval": str(interval_ms),
            "OCF_RESKEY_CRM_meta_timeout": str(timeout_ms),
            **{f"OCF_RESKEY_{k}": v for k, v in {**self.params(), **over}.items()},
        }
        return subprocess.run(
            [str(AGENT), action], capture_output=True, text=True, env=env, timeout=180
        )

    def code(self, action: str, **kwargs: Any) -> int:
        return self.run(action, **kwargs).returncode

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return "(no log)"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


def wait_code(resource: Resource, action: str, code: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (done := resource.run(action)).returncode != code:
        assert time.monotonic() < deadline, (
            f"{action}: {done.returncode}, not {code}: {done.stderr}\n{resource.log()}"
        )
        time.sleep(0.1)


def make_resource(base: Path, extra_top: tuple[str, ...] = ()) -> Resource:
    conf = write_lone_node(base, "bm1", extra_top)
    return Resource(conf, base / "run" / "bmsync.pid", base / "log" / "bmsync.log")


def cleanup(resource: Resource) -> None:
    """Whatever the test left: the agent's stop, then SIGKILL to the pid it
    recorded (a daemon this test started) if it still runs."""
    started = resource.pid()
    resource.run("stop")
    if started is not None and alive(started):
        os.kill(started, signal.SIGKILL)


@pytest.fixture
def resource(tmp_path: Path) -> Iterator[Resource]:
    assert BMSYNC.exists(), f"{BMSYNC}: the bmsync console script of this virtualenv"
    made = make_resource(tmp_path)
    try:
        yield made
    finally:
        cleanup(made)


def test_meta_data_is_valid_ra_api_xml(resource: Resource) -> None:
    done = resource.run("meta-data")
    assert done.returncode == OCF_SUCCESS
    xml = done.stdout
    checked = subprocess.run(
        ["xmllint", "--noout", "--valid", "-"],
        input=xml,
        capture_output=True,
        text=True,
        cwd=DTD.parent,  # the DOCTYPE names ra-api-1.dtd
    )
    assert checked.returncode == 0, checked.stderr
    assert '<resource-agent name="bmsync"' in xml
    for param in ("config", "binary", "pidfile", "logfile"):
        assert f'<parameter name="{param}"' in xml
    assert 'default="/etc/bmsync/bmsync.yaml"' in xml
    assert 'default="/usr/local/bin/bmsync"' in xml
    # the promotable clone's monitors, spelled as resource-agents 4.12 agents do
    for interval, role in (("10s", "Promoted"), ("11s", "Unpromoted")):
        monitor = f'interval="{interval}" depth="0" role="{role}"'
        assert f'<action name="monitor" timeout="30s" {monitor} />' in xml
    for action in ("start", "stop", "promote", "demote", "notify", "validate-all"):
        assert f'<action name="{action}"' in xml


def test_ocf_tester_passes(resource: Resource) -> None:
    """The command an administrator would run before handing the agent to
    Pacemaker (README, "Under Pacemaker or keepalived")."""
    argv = [OCF_TESTER, "-n", "bmsync"]
    for name, value in resource.params().items():
        argv += ["-o", f"{name}={value}"]
    env = {**os.environ, "OCF_ROOT": str(OCF_ROOT)}
    done = subprocess.run([*argv, str(AGENT)], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{resource.log()}"
    assert f"{AGENT} passed all tests" in done.stdout
    # it ends with the resource stopped: no daemon left, no pid file
    assert resource.code("monitor") == OCF_NOT_RUNNING
    assert not resource.pidfile.exists()
    assert status(resource.conf)["state"] == "stopped"


def test_each_state_gives_its_ocf_code(resource: Resource) -> None:
    conf = resource.conf
    assert resource.code("monitor", interval_ms=0) == OCF_NOT_RUNNING  # the probe
    assert resource.code("monitor") == OCF_NOT_RUNNING

    started = resource.run("start")
    assert started.returncode == OCF_SUCCESS, started.stderr + resource.log()
    pid = resource.pid()
    assert pid is not None and alive(pid)
    assert resource.code("monitor") == OCF_SUCCESS
    shown = status(conf)
    assert (shown["state"], shown["role"], shown["exit_code"]) == ("standby", "passive", 0)
    assert resource.code("start") == OCF_SUCCESS  # started twice: one daemon
    assert resource.pid() == pid

    promoted = resource.run("promote")
    assert promoted.returncode == OCF_SUCCESS, promoted.stderr + resource.log()
    assert resource.code("monitor") == OCF_RUNNING_MASTER
    shown = status(conf)
    assert shown["role"] == "active" and shown["epoch"] == 1
    # the peer is down: disconnected (or still trying), and still the master
    assert shown["state"] in ("disconnected", "reconciling"), shown
    wait_code(resource, "monitor", OCF_RUNNING_MASTER)
    assert resource.code("promote") == OCF_SUCCESS  # promoted twice: the same epoch
    assert status(conf)["epoch"] == 1

    demoted = resource.run("demote")
    assert demoted.returncode == OCF_SUCCESS, demoted.stderr + resource.log()
    assert resource.code("monitor") == OCF_SUCCESS
    shown = status(conf)
    assert (shown["state"], shown["role"], shown["epoch"]) == ("standby", "passive", 1)
    assert resource.code("demote") == OCF_SUCCESS
    assert resource.pid() == pid and alive(pid)  # the daemon stood by, it did not exit

    assert resource.code("promote") == OCF_SUCCESS
    assert status(conf)["epoch"] == 2  # each promotion is a new epoch
    assert resource.code("demote") == OCF_SUCCESS

    stopped = resource.run("stop")
    assert stopped.returncode == OCF_SUCCESS, stopped.stderr
    assert not alive(pid) and not resource.pidfile.exists()
    assert resource.code("monitor") == OCF_NOT_RUNNING
    shown = status(conf)
    assert (shown["state"], shown["role"], shown["exit_code"]) == ("stopped", "passive", 3)
    assert resource.code("stop") == OCF_SUCCESS  # stopping a stopped resource
    assert '"event": "batch_applied"' not in resource.log()  # nothing reached a peer
    assert '"event": "daemon_stopped"' in resource.log()  # JSON lines, in its log file


def test_a_node_left_active_starts_unpromoted(resource: Resource) -> None:
    """Pacemaker decides where bmsync is promoted: a node whose role.json
    says active (it was the active node when it went down) starts passive."""
    assert bmsync(resource.conf, "promote").returncode == 0
    assert status(resource.conf)["role"] == "active"
    started = resource.run("start")
    assert started.returncode == OCF_SUCCESS, started.stderr + resource.log()
    assert resource.code("monitor") == OCF_SUCCESS
    shown = status(resource.conf)
    assert (shown["state"], shown["role"], shown["epoch"]) == ("standby", "passive", 1)
    assert resource.code("promote") == OCF_SUCCESS
    assert status(resource.conf)["epoch"] == 2


def test_a_suspended_active_node_is_a_failed_master(tmp_path: Path) -> None:
    """The split-brain guard fails closed: with a VIP it cannot check (no
    such interface), a promoted node is suspended. Pacemaker sees a failed
    master (9) and its promote fails, saying why; demoting it works."""
    vip = (
        "ha:",
        "  vip:",
        "    address: 127.0.0.77",
        "    interface: bmsyncnone0",  # no such interface
        "    check_interval_s: 1",
    )
    resource = make_resource(tmp_path, vip)
    try:
        assert resource.code("start") == OCF_SUCCESS, resource.log()
        assert resource.code("monitor") == OCF_SUCCESS  # passive: the guard does not matter
        assert bmsync(resource.conf, "promote").returncode == 0
        wait_code(resource, "monitor", OCF_FAILED_MASTER)
        shown = status(resource.conf)
        assert (shown["state"], shown["role"]) == ("suspended", "active")
        failed = resource.run("monitor")
        assert "suspended" in failed.stderr and "bmsyncnone0" in failed.stderr

        started = time.monotonic()
        promoted = resource.run("promote", timeout_ms=8000)
        assert promoted.returncode == OCF_ERR_GENERIC
        assert time.monotonic() - started < 8  # within its timeout, not Pacemaker's kill
        assert "promote: bmsync is suspended" in promoted.stderr
        assert "bmsyncnone0" in promoted.stderr

        assert resource.code("demote") == OCF_SUCCESS
        assert resource.code("monitor") == OCF_SUCCESS
        assert status(resource.conf)["role"] == "passive"
    finally:
        cleanup(resource)


def test_validate_all_names_the_problem(resource: Resource, tmp_path: Path) -> None:
    assert resource.code("validate-all") == OCF_SUCCESS
    bad = tmp_path / "bad.yaml"
    bad.write_text(resource.conf.read_text().replace("reconnect_max_s", "reconnect_maxi_s"))
    done = resource.run("validate-all", config=str(bad))
    assert done.returncode == OCF_ERR_CONFIGURED
    assert "reconnect_maxi_s: unknown key" in done.stderr
    assert resource.run("start", config=str(bad)).returncode == OCF_ERR_CONFIGURED
    assert not resource.pidfile.exists()
    missing = resource.run("validate-all", config=str(tmp_path / "none.yaml"))
    assert missing.returncode == OCF_ERR_CONFIGURED and "none.yaml" in missing.stderr

    no_binary = str(tmp_path / "no-such-bmsync")
    assert resource.code("validate-all", binary=no_binary) == OCF_ERR_INSTALLED
    assert resource.code("start", binary=no_binary) == OCF_ERR_INSTALLED
    # the probe on a node without bmsync installed: not running there
    assert resource.code("monitor", interval_ms=0, binary=no_binary) == OCF_NOT_RUNNING


def test_stop_signals_only_the_daemon_it_started(resource: Resource) -> None:
    """A pid file left by a crash whose pid now belongs to another process:
    monitor says not running, stop succeeds and that process lives on."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        resource.pidfile.parent.mkdir(parents=True)
        resource.pidfile.write_text(f"{other.pid}\n")
        assert resource.code("monitor") == OCF_NOT_RUNNING
        resource.pidfile.write_text(f"{other.pid}\n")
        assert resource.code("stop") == OCF_SUCCESS
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_crashed_daemon_is_not_running_and_restarts(resource: Resource) -> None:
    assert resource.code("start") == OCF_SUCCESS, resource.log()
    assert resource.code("promote") == OCF_SUCCESS
    pid = resource.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_code(resource, "monitor", OCF_NOT_RUNNING)
    assert not resource.pidfile.exists()  # the stale pid file is gone
    # Pacemaker's recovery: stop, start (Unpromoted), promote at a new epoch
    assert resource.code("stop") == OCF_SUCCESS
    assert resource.code("start") == OCF_SUCCESS
    assert resource.code("monitor") == OCF_SUCCESS
    assert resource.code("promote") == OCF_SUCCESS
    assert resource.code("monitor") == OCF_RUNNING_MASTER
    assert status(resource.conf)["epoch"] == 2
