"""A promotion or a demotion while sync is live, over a private sshd: the
open session ends before the command returns, nothing is written after it,
the old active learns why and suspends, and every piece of advice the
status gives for getting out of that state works when followed."""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Any

from bmsync.core.roles import NodeRole, Stamp
from bmsync.state.lock import LOCK_NAME
from bmsync.state.roles import RoleStore
from tests.integration.conftest import Pair
from tests.integration.daemon_helpers import (
    RunningDaemon,
    agents,
    converge,
    take_the_passive_away,
    wait_for,
)
from tests.sshd import write_config

NOT_ACTIVE = 8
NOTHING_CHANGED = 1


def lock_is_free(state_dir: Path) -> bool:
    with open(state_dir / LOCK_NAME, "rb") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    return True


def status_of(pair: Pair, conf: Path | None = None) -> dict[str, Any]:
    done = pair.bmsync("status", "--json", conf=conf)
    answer: dict[str, Any] = json.loads(done.stdout)
    answer["exit_code"] = done.returncode
    return answer


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def syncing_pair(pair: Pair) -> RunningDaemon:
    etc = pair.active / "etc"
    etc.mkdir()
    (etc / "a.conf").write_text("v1\n")
    daemon = RunningDaemon(pair)
    daemon.wait_state("syncing")
    converge(pair, timeout_s=10)
    assert len(agents(pair)) == 1  # the daemon's session is open
    return daemon


def test_promoting_the_passive_ends_the_live_session_before_promote_returns(pair: Pair) -> None:
    daemon = syncing_pair(pair)
    try:
        done = pair.bmsync("promote", conf=pair.passive_conf)
        assert done.returncode == 0, done.stderr
        assert "active at epoch 2" in done.stdout and "has ended" in done.stdout
        assert lock_is_free(pair.base / "state2")  # no writer holds bm2 any more

        # bm2 is the active node now: its own change is never overwritten
        (pair.passive / "etc" / "new-on-bm2.conf").write_text("bm2's\n")
        (pair.active / "etc" / "a.conf").write_text("v2 from the old active\n")
        (pair.active / "etc" / "b.conf").write_text("from the old active\n")
        before = snapshot(pair.passive)
        status = daemon.wait_state("suspended", timeout_s=30)
        assert "stale" in status["reason"], status
        assert status["highest_seen"] == {"epoch": 2, "node": "bm2"}
        assert status["exit_code"] == 1
        # told by the session that ended, not found out at a reconnection
        (told,) = [e["message"] for e in status["errors"]]
        assert told.startswith("peer refused: peer bm2 ended the session: bm2 is active")

        resync = pair.bmsync("resync")  # through the daemon
        assert resync.returncode == NOT_ACTIVE, resync.stderr
        assert "stale" in resync.stderr
        time.sleep(1)  # what would have been a batch window, many times over
        assert snapshot(pair.passive) == before
    finally:
        daemon.stop()
    assert RoleStore(pair.base / "state1", "bm1").load().highest_seen == Stamp(2, "bm2")


def test_demoting_the_active_returns_once_it_sends_nothing_more(pair: Pair) -> None:
    daemon = syncing_pair(pair)
    try:
        done = pair.bmsync("demote")
        assert done.returncode == 0, done.stderr
        assert "stopped sending and stands by" in done.stdout
        assert daemon.status()["state"] == "standby"
        (pair.active / "etc" / "after-demote.conf").write_text("must stay here\n")
        time.sleep(1)  # many batch windows
        assert not (pair.passive / "etc" / "after-demote.conf").exists()
    finally:
        daemon.stop()


def test_a_sender_with_a_higher_stamp_takes_over_the_passive_node(pair: Pair) -> None:
    """A third node promoted above bm1 (as after a failover elsewhere)
    connects while bm1's session is open: bm1's session ends, bm3 writes,
    and bm1 learns it is superseded."""
    daemon = syncing_pair(pair)
    try:
        root3 = pair.base / "bm3-root"
        (root3 / "etc").mkdir(parents=True)
        (root3 / "etc" / "a.conf").write_text("from bm3\n")
        bm3 = write_config(pair.base / "bm3.yaml", "bm3", root3, pair.base / "state3", pair.sshd)
        store = RoleStore(pair.base / "state3", "bm3")
        store.save(NodeRole("bm3").saw(Stamp(4, "bm0")).promote(), "test: epoch 5")
        done = pair.bmsync("resync", conf=bm3)
        assert done.returncode == 0, done.stderr + done.stdout
        assert (pair.passive / "etc" / "a.conf").read_text() == "from bm3\n"

        (pair.active / "etc" / "a.conf").write_text("bm1 again\n")
        status = daemon.wait_state("suspended", timeout_s=30)
        assert status["highest_seen"] == {"epoch": 5, "node": "bm3"}
        assert "stale" in status["reason"]
        assert (pair.passive / "etc" / "a.conf").read_text() == "from bm3\n"
    finally:
        daemon.stop()


def test_the_receiver_restarting_after_a_promotion_refuses_the_old_active(pair: Pair) -> None:
    daemon = syncing_pair(pair)
    try:
        take_the_passive_away(pair)
        daemon.wait_state("disconnected", timeout_s=30)
        # ...and comes back promoted (a failover while bm1 could not see it)
        assert pair.bmsync("promote", conf=pair.passive_conf).returncode == 0
        (pair.passive / "etc" / "a.conf").write_text("bm2's own\n")
        pair.sshd.start()
        status = daemon.wait_state("suspended", timeout_s=30)
        assert "stale" in status["reason"]
        assert (pair.passive / "etc" / "a.conf").read_text() == "bm2's own\n"
    finally:
        daemon.stop()


def test_the_advice_for_a_stale_node_that_must_stay_active_works(pair: Pair) -> None:
    daemon = syncing_pair(pair)
    try:
        assert pair.bmsync("promote", conf=pair.passive_conf).returncode == 0
        status = daemon.wait_state("suspended", timeout_s=30)
        advice = status["clears"][0]
        assert "'bmsync demote' on bm2, then 'bmsync promote' here (epoch 3" in advice
        # followed, word for word
        assert pair.bmsync("demote", conf=pair.passive_conf).returncode == 0
        done = pair.bmsync("promote")
        assert done.returncode == 0 and "active at epoch 3" in done.stdout, done.stdout
        status = daemon.wait_state("syncing", timeout_s=30)
        assert status["epoch"] == 3 and status["reason"] is None
        (pair.active / "etc" / "a.conf").write_text("bm1 is the active node again\n")
        converge(pair, timeout_s=10)
    finally:
        daemon.stop()


def test_the_advice_for_a_stale_node_whose_peer_is_now_active_works(pair: Pair) -> None:
    daemon = syncing_pair(pair)
    try:
        assert pair.bmsync("promote", conf=pair.passive_conf).returncode == 0
        status = daemon.wait_state("suspended", timeout_s=30)
        assert "'bmsync demote' here if bm2 is the active node now" in status["clears"][0]
        assert pair.bmsync("demote").returncode == 0
        status = daemon.wait_state("standby", timeout_s=30)
        assert (status["role"], status["reason"]) == ("passive", None)
    finally:
        daemon.stop()


def test_the_advice_for_a_peer_claiming_active_too_works(pair: Pair) -> None:
    """bm1 at epoch 2 (above anything bm2 has seen) finds bm2 promoted to
    epoch 1 by a second operator: bm1 is not stale, bm2 claims active."""
    store = RoleStore(pair.base / "state1", "bm1")
    store.save(NodeRole("bm1").saw(Stamp(1, "bm0")).promote(), "test: epoch 2")
    (pair.active / "etc").mkdir()
    (pair.active / "etc" / "a.conf").write_text("from bm1\n")
    assert "epoch 1" in pair.bmsync("promote", conf=pair.passive_conf).stdout
    daemon = RunningDaemon(pair)
    try:
        status = daemon.wait_state("suspended", timeout_s=30)
        assert "bm2 claims active too" in status["reason"]
        (advice,) = status["clears"]
        assert advice.startswith("'bmsync demote' on bm2 if this node must be the active one")
        assert pair.bmsync("demote", conf=pair.passive_conf).returncode == 0
        daemon.wait_state("syncing", timeout_s=30)
        converge(pair, timeout_s=10)
    finally:
        daemon.stop()


def test_a_pause_survives_a_restart_and_works_without_a_daemon(pair: Pair) -> None:
    (pair.active / "etc").mkdir()
    (pair.active / "etc" / "a.conf").write_text("v1\n")
    done = pair.bmsync("pause", "--reason", "kernel update")
    assert done.returncode == 0 and "start paused" in done.stdout, done.stderr
    assert pair.bmsync("pause").returncode == NOTHING_CHANGED
    assert status_of(pair)["paused_reason"] == "kernel update"
    daemon = RunningDaemon(pair)
    try:
        status = daemon.wait_state("paused", timeout_s=30)
        assert status["paused_reason"] == "kernel update" and status["exit_code"] == 1
        time.sleep(0.5)
        assert not (pair.passive / "etc").exists()
        assert daemon.stop() == 0
        daemon = RunningDaemon(pair)
        daemon.wait_state("paused", timeout_s=30)  # still, after a restart
        assert pair.bmsync("resume").returncode == 0
        daemon.wait_state("syncing", timeout_s=30)
        converge(pair, timeout_s=10)
        assert pair.bmsync("resume").returncode == NOTHING_CHANGED
    finally:
        daemon.stop()
    assert pair.bmsync("resume").returncode == NOTHING_CHANGED  # no daemon, not paused


def test_resume_force_on_a_daemon_that_is_not_suspended_changes_nothing(pair: Pair) -> None:
    daemon = syncing_pair(pair)
    try:
        done = pair.bmsync("resume", "--force", "--reason", "just in case")
        assert done.returncode == NOTHING_CHANGED and "nothing to force" in done.stdout
        assert daemon.status()["forced"] is None
    finally:
        daemon.stop()
    assert json.loads((pair.base / "state1" / "role.json").read_text())["forced"] is None


def test_after_a_promotion_no_agent_process_is_left_for_the_old_active(pair: Pair) -> None:
    """The agent has exited before `promote` returns (sshd reaps it just after)."""
    daemon = syncing_pair(pair)
    try:
        (pid,) = agents(pair)
        assert pair.bmsync("promote", conf=pair.passive_conf).returncode == 0
        wait_for(lambda: pid not in agents(pair), 5, "the agent process to be reaped")
    finally:
        daemon.stop()
