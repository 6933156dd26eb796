"""contrib/keepalived/bmsync-notify, keepalived's notify script: each VRRP
transition it is called with (TYPE NAME STATE PRIORITY) sets bmsync's role
(MASTER promotes, BACKUP, FAULT and STOP demote), logged through logger,
with a running daemon following; two MASTERs at once (a partition,
keepalived issue 2649) leave the old one suspended, not writing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.daemon_process import DaemonProcess
from tests.integration.conftest import Pair
from tests.integration.daemon_helpers import RunningDaemon
from tests.integration.lone_node import BMSYNC, role_file, status, write_lone_node

NOTIFY = Path(__file__).parents[2] / "contrib" / "keepalived" / "bmsync-notify"


def fake_logger(base: Path) -> tuple[dict[str, str], Path]:
    """A `logger` first on PATH that records its arguments (no syslog here)."""
    bindir = base / "bin"
    bindir.mkdir()
    record = base / "syslog"
    logger = bindir / "logger"
    logger.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {record}\n')
    logger.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}, record


def notify(
    state: str, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """keepalived's call: ``bmsync-notify INSTANCE VI_1 STATE 100``."""
    return subprocess.run(
        [str(NOTIFY), *options, "INSTANCE", "VI_1", state, "100"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_transitions_set_the_role_and_the_daemon_follows(tmp_path: Path) -> None:
    conf = write_lone_node(tmp_path, "bm1")
    path_env, syslog = fake_logger(tmp_path)
    env = {"BMSYNC": str(BMSYNC), "BMSYNC_CONFIG": str(conf), **path_env}
    daemon = DaemonProcess(conf, tmp_path / "daemon.log").start()
    try:
        daemon.wait_state("standby", timeout_s=30)
        # state after each transition: (role, epoch, the daemon's state)
        expected = [
            ("MASTER", "active", 1, "disconnected"),  # the peer is down: still sending
            ("BACKUP", "passive", 1, "standby"),
            ("FAULT", "passive", 1, "standby"),  # already passive: nothing changed, exit 0
            ("MASTER", "active", 2, "disconnected"),  # each promotion a new epoch
            ("MASTER", "active", 2, "disconnected"),  # notified again: nothing changed
            ("STOP", "passive", 2, "standby"),
        ]
        for state, role, epoch, daemon_state in expected:
            done = notify(state, env=env)
            assert done.returncode == 0, f"{state}: {done.stdout}{done.stderr}"
            record = role_file(tmp_path / "bm1-state")
            assert (record["role"], record["epoch"]) == (role, epoch), state
            shown = daemon.wait_state(daemon_state, timeout_s=30)
            assert (shown["role"], shown["epoch"]) == (role, epoch), state
        logged = syslog.read_text().splitlines()
        assert len(logged) == len(expected)
        assert logged[0].startswith("-t bmsync-notify -p daemon.notice -- INSTANCE VI_1 MASTER")
        assert "bmsync promote: bmsync on bm1: active at epoch 1" in logged[0]
        assert "daemon.info" in logged[2] and "already passive" in logged[2]
        assert "bmsync demote: bmsync on bm1: passive at epoch 2" in logged[-1]
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_options_states_and_failures(tmp_path: Path) -> None:
    conf = write_lone_node(tmp_path, "bm1")
    env, syslog = fake_logger(tmp_path)
    options = ("-b", str(BMSYNC), "-c", str(conf))
    assert notify("MASTER", *options, env=env).returncode == 0
    assert status(conf)["role"] == "active"
    ignored = notify("UNKNOWN", *options, env=env)  # not a VRRP state: the role stays
    assert ignored.returncode == 0
    assert "daemon.warning -- INSTANCE VI_1: state 'UNKNOWN' ignored" in syslog.read_text()
    assert status(conf)["role"] == "active"
    assert notify("BACKUP", *options, env=env).returncode == 0
    assert status(conf)["role"] == "passive"

    broken = tmp_path / "broken.yaml"
    broken.write_text(conf.read_text() + "unknown_key: 1\n")
    failed = notify("MASTER", "-b", str(BMSYNC), "-c", str(broken), env=env)
    assert failed.returncode == 2  # bmsync's own exit code: bad configuration
    error = syslog.read_text().splitlines()[-1]
    assert error.startswith("-t bmsync-notify -p daemon.err -- INSTANCE VI_1 MASTER")
    assert "bmsync promote FAILED (exit 2)" in error and "unknown_key" in error
    assert status(conf)["role"] == "passive"
    usage = subprocess.run(
        [str(NOTIFY), "MASTER"], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert usage.returncode == 2 and "expected TYPE NAME STATE" in syslog.read_text()


def test_two_masters_leave_the_old_one_suspended(pair: Pair) -> None:
    """A partition makes both keepalived nodes MASTER: bm2 is promoted above
    bm1 (a higher epoch), bm1's open session is ended and its daemon
    suspends as stale; when keepalived makes bm1 BACKUP it stands by."""
    bm1 = ("-b", str(BMSYNC), "-c", str(pair.active_conf))
    bm2 = ("-b", str(BMSYNC), "-c", str(pair.passive_conf))
    assert notify("MASTER", *bm1).returncode == 0  # promoted at set-up: nothing changed
    (pair.active / "a.conf").write_text("from bm1\n")
    daemon = RunningDaemon(pair)
    try:
        assert daemon.wait_state("syncing", timeout_s=30)["epoch"] == 1
        assert notify("MASTER", *bm2).returncode == 0
        record = role_file(pair.base / "state2")
        assert (record["role"], record["epoch"]) == ("active", 2)
        shown = daemon.wait_state("suspended", timeout_s=30)
        assert (shown["role"], shown["epoch"]) == ("active", 1)
        assert "stale" in shown["reason"]
        assert notify("BACKUP", *bm1).returncode == 0
        assert daemon.wait_state("standby", timeout_s=30)["role"] == "passive"
    finally:
        assert daemon.stop() == 0, daemon.log()
