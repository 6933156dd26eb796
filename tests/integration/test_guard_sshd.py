"""Roles and epochs end to end, over a private sshd: promote and demote,
a passive node that refuses to send, both nodes promoted, and an old active
coming back after a failover. (The same scenarios across network
namespaces, with the VIP and link cuts, are in tests/ha.)"""

from __future__ import annotations

import json
import time
from typing import Any

from bmsync.state.roles import RoleStore
from tests.integration.conftest import Pair
from tests.integration.daemon_helpers import RunningDaemon, converge

NOT_ACTIVE = 8
NOTHING_CHANGED = 1


def role_of(pair: Pair, node: str) -> dict[str, Any]:
    conf = pair.active_conf if node == "bm1" else pair.passive_conf
    done = pair.bmsync("status", "--json", conf=conf)
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_promote_and_demote(pair: Pair) -> None:
    bm2 = pair.passive_conf
    assert role_of(pair, "bm2")["role"] == "passive" and role_of(pair, "bm2")["epoch"] == 0
    done = pair.bmsync("promote", conf=bm2)
    assert done.returncode == 0 and "active at epoch 1" in done.stdout
    again = pair.bmsync("promote", conf=bm2)
    assert again.returncode == NOTHING_CHANGED
    assert "already active at epoch 1" in again.stdout and "nothing changed" in again.stdout
    assert pair.bmsync("demote", conf=bm2).returncode == 0
    again = pair.bmsync("demote", conf=bm2)
    assert again.returncode == NOTHING_CHANGED and "already passive" in again.stdout
    status = role_of(pair, "bm2")
    assert (status["state"], status["role"], status["epoch"]) == ("stopped", "passive", 1)
    assert status["highest_seen"] == {"epoch": 1, "node": "bm2"}
    assert "bmsync demote" in status["role_changed"]
    assert "epoch 2" in pair.bmsync("promote", conf=bm2).stdout
    record = json.loads((pair.base / "state2" / "role.json").read_text())
    assert record["role"] == "active" and record["epoch"] == 2


def test_a_passive_node_refuses_to_send(pair: Pair) -> None:
    (pair.active / "etc").mkdir()
    (pair.active / "etc" / "a.conf").write_text("x\n")
    RoleStore(pair.base / "state1", "bm1").save(
        RoleStore(pair.base / "state1", "bm1").load().demote(), "test"
    )
    done = pair.bmsync("resync")
    assert done.returncode == NOT_ACTIVE, done.stderr
    assert "bm1 is passive" in done.stderr and "bmsync promote" in done.stderr
    assert pair.bmsync("resync", "--dry-run").returncode == 0  # comparing writes nothing
    assert not (pair.passive / "etc").exists()
    assert pair.bmsync("promote").returncode == 0  # the advice, followed
    assert pair.bmsync("resync").returncode == 0
    assert (pair.passive / "etc" / "a.conf").read_text() == "x\n"


def test_the_daemon_of_a_passive_node_stands_by_until_promoted(pair: Pair) -> None:
    """`bmsync run` runs on both nodes: passive, it sends nothing (state
    standby, `bmsync status` exit 0); promoted, it syncs from there without
    a restart; demoted, it stands by again once its batch is done."""
    (pair.active / "etc").mkdir()
    (pair.active / "etc" / "a.conf").write_text("x\n")
    store = RoleStore(pair.base / "state1", "bm1")
    store.save(store.load().demote(), "test")
    daemon = RunningDaemon(pair)
    try:
        status = daemon.wait_state("standby", timeout_s=30)
        assert status["role"] == "passive"
        shown = pair.bmsync("status")
        assert shown.returncode == 0, shown.stdout
        assert "this node is passive: it syncs once promoted" in shown.stdout
        (pair.active / "etc" / "b.conf").write_text("changed while passive\n")
        time.sleep(1)  # many batch windows: a passive node must still send nothing
        assert not (pair.passive / "etc").exists()

        done = pair.bmsync("promote")
        assert done.returncode == 0, done.stderr
        assert "the daemon here syncs from this node now" in done.stdout
        daemon.wait_state("syncing", timeout_s=30)
        converge(pair, timeout_s=30)  # what changed while passive is found too

        done = pair.bmsync("demote")
        assert done.returncode == 0, done.stderr
        assert "stopped sending and stands by" in done.stdout
        assert daemon.status()["state"] == "standby"
        (pair.active / "etc" / "c.conf").write_text("after the demotion\n")
        time.sleep(1)
        assert not (pair.passive / "etc" / "c.conf").exists()
        assert daemon.process is not None and daemon.process.poll() is None  # still running
    finally:
        assert daemon.stop() == 0


def test_a_damaged_role_file_is_an_error_not_a_reset(pair: Pair) -> None:
    (pair.base / "state1" / "role.json").write_text('{"node": "bm1", "role": "act')
    done = pair.bmsync("resync")
    assert done.returncode == NOT_ACTIVE
    assert "role.json is damaged" in done.stderr


def test_both_promoted_neither_writes_and_both_say_why(pair: Pair) -> None:
    (pair.active / "etc").mkdir()
    (pair.active / "etc" / "a.conf").write_text("from bm1\n")
    assert pair.bmsync("promote", conf=pair.passive_conf).returncode == 0  # the second operator
    daemon = RunningDaemon(pair)
    try:
        status = daemon.wait_state("suspended", timeout_s=60)
        assert status["exit_code"] == 1
        assert "split-brain suspected: bm2 claims active too" in status["reason"]
        assert status["since"] is not None and status["clears"]
        assert (status["role"], status["epoch"], status["peer_role"]) == ("active", 1, "active")
        (pair.active / "etc" / "b.conf").write_text("still from bm1\n")
        daemon.wait_another_handshake(status)  # refused again
        assert daemon.status()["state"] == "suspended"
        assert not (pair.passive / "etc").exists()  # nothing written on bm2
        human = pair.bmsync("status").stdout
        assert "suspended" in human and "cleared by" in human

        # evidence: bm2 demoted, then bm1 promoted above it by an operator
        assert pair.bmsync("demote", conf=pair.passive_conf).returncode == 0
        assert pair.bmsync("demote").returncode == 0  # the daemon stands by: bm1 is passive
        daemon.wait_state("standby", timeout_s=10)
        assert "epoch 2" in pair.bmsync("promote").stdout  # syncs again, without a restart
        daemon.wait_state("syncing", timeout_s=10)
    finally:
        daemon.stop()
    daemon = RunningDaemon(pair)
    try:
        daemon.wait_state("syncing", timeout_s=10)
        converge(pair)
        assert role_of(pair, "bm1")["peer_seen"] == {"epoch": 2, "node": "bm1"}
    finally:
        daemon.stop()


def test_the_old_active_returning_after_a_failover_is_refused_and_told_it_is_stale(
    pair: Pair,
) -> None:
    etc = pair.active / "etc"
    etc.mkdir()
    (etc / "a.conf").write_text("v1\n")
    old = RunningDaemon(pair)
    try:
        old.wait_state("syncing")
        converge(pair)
    finally:
        assert old.stop() == 0
    # failover: bm2 is promoted while bm1 is down; it has seen bm1's epoch 1
    done = pair.bmsync("promote", conf=pair.passive_conf)
    assert "active at epoch 2" in done.stdout
    (pair.passive / "etc" / "a.conf").write_text("written on the new active\n")
    (etc / "a.conf").write_text("v2 on the old active\n")
    before = {p.name: p.read_text() for p in (pair.passive / "etc").iterdir()}

    back = RunningDaemon(pair)
    try:
        status = back.wait_state("suspended", timeout_s=10)
        assert "this node is stale" in status["reason"]
        assert status["highest_seen"] == {"epoch": 2, "node": "bm2"}
        forced = pair.bmsync("resume", "--force", "--reason", "I am sure")
        assert forced.returncode == NOTHING_CHANGED  # not past a newer epoch
        assert "still suspended" in forced.stdout and "stale" in forced.stdout
        time.sleep(0.5)
        assert {p.name: p.read_text() for p in (pair.passive / "etc").iterdir()} == before
    finally:
        back.stop()
    stopped = role_of(pair, "bm1")
    assert stopped["state"] == "stopped" and "stale" in stopped["reason"]
    assert stopped["highest_seen"] == {"epoch": 2, "node": "bm2"}  # persisted
    assert any("'bmsync promote' here (epoch 3" in c for c in stopped["clears"])
    done = pair.bmsync("resync")
    assert done.returncode == NOT_ACTIVE and "bm1 is stale" in done.stderr
    assert {p.name: p.read_text() for p in (pair.passive / "etc").iterdir()} == before
    # the advice for a node that must stay the active one, followed word for word
    assert "'bmsync demote' on bm2, then 'bmsync promote' here (epoch 3)" in done.stderr
    assert pair.bmsync("demote", conf=pair.passive_conf).returncode == 0
    assert "active at epoch 3" in pair.bmsync("promote").stdout
    assert pair.bmsync("resync").returncode == 0
    assert (pair.passive / "etc" / "a.conf").read_text() == "v2 on the old active\n"


def test_resume_force_needs_a_reason(pair: Pair) -> None:
    done = pair.bmsync("resume", "--force")
    assert done.returncode == 2 and "--reason" in done.stderr


def test_the_passive_records_the_highest_sender_it_accepted(pair: Pair) -> None:
    (pair.active / "etc").mkdir()
    pair.resync_json()
    seen = RoleStore(pair.base / "state2", "bm2").load().highest_seen
    assert (seen.epoch, seen.node) == (1, "bm1")


def test_a_vip_check_that_cannot_run_suspends_sync_and_says_why(pair: Pair) -> None:
    missing = "bmsync-nx0"  # no such interface on this machine
    pair.configure(
        extra_top=("ha:", "  vip:", "    address: 10.231.9.100", f"    interface: {missing}")
    )
    (pair.active / "etc").mkdir()
    (pair.active / "etc" / "a.conf").write_text("from bm1\n")
    daemon = RunningDaemon(pair)
    try:
        status = daemon.wait_reason("suspended", "split-brain cannot be ruled out")
        assert status["exit_code"] == 1
        assert f"ha.vip.interface {missing}: 'ip addr show' failed" in status["reason"]
        assert any("fix ha.vip in the config" in c for c in status["clears"])
        daemon.wait_another_handshake(status)  # it asks the peer again, and writes nothing
        again = daemon.status()
        assert again["state"] == "suspended" and missing in again["reason"]
        assert not (pair.passive / "etc").exists()
        errors = [e["message"] for e in again["errors"]]
        assert len([e for e in errors if missing in e]) == 1, errors  # once, not every check
        human = pair.bmsync("status")
        assert human.returncode == 1 and missing in human.stdout
    finally:
        assert daemon.stop() == 0
