"""`bmsync ha switchover` between two nodes (tests/ha/nodes.py: each its
own network and mount namespace, sshd, daemon, shared loop-device storage):
everything moves from the active node to the passive one and back, run
from either side; a step that fails undoes the steps done, in reverse, and
says where each node stands."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bmsync.core.errors import HaRefused
from tests.ha.nodes import (
    Node,
    Pair,
    active_at_start,
    assert_ok,
    holds_vip,
    needs_two_nodes,
    role_of,
    wait_for,
)

pytestmark = needs_two_nodes()


def add_services(node: Node, start: str = "") -> Path:
    """ha.services whose start and stop leave a mark in the node's base
    directory (``start``: another start command)."""
    marks = node.base / "services"
    started = start or f"echo started > {marks}"
    lines = [
        "  services:",
        f'    start: ["{started}"]',
        f'    stop: ["echo stopped > {marks}"]',
        f'    check: ["grep -q started {marks}"]',
        "    timeout_s: 10",
    ]
    with node.conf.open("a") as conf:
        conf.write("\n".join(lines) + "\n")
    return marks


def synced(source: Node, target: Node, name: str, text: str) -> None:
    (source.root / name).write_text(text)
    wait_for(
        f"{name} from {source.name} on {target.name}",
        lambda: (target.root / name).exists() and (target.root / name).read_text() == text,
    )


def test_switchover_and_back(pair: Pair) -> None:
    a, b = pair.nodes()
    marks = {node.name: add_services(node) for node in (a, b)}
    active_at_start(pair, services=True)
    synced(a, b, "before.conf", "from bm1\n")

    planned = b.bmsync("ha", "switchover", "--dry-run")
    assert_ok(planned)
    lines = planned.stdout.splitlines()
    assert lines[0].startswith("switchover bm1 -> bm2, 10 steps")
    assert "bm1: final sync to the peer, pause sync, final check" in lines[1]
    assert "bm2: promote at a new epoch" in lines[9]
    assert role_of(a) == ("active", 1)  # a dry run changes nothing

    done = b.bmsync("ha", "switchover", timeout_s=300)  # run on the passive node
    assert_ok(done)
    assert "[10/10] bm1: lift the pause of sync" in done.stdout
    assert "switchover bm1 -> bm2: done; bm2 is the active node, syncing to bm1" in done.stdout
    assert role_of(b) == ("active", 2)
    assert role_of(a) == ("passive", 1)
    assert holds_vip(b, pair.vip) and not holds_vip(a, pair.vip)
    assert all(b.mounted_here().values()) and not any(a.mounted_here().values())
    assert marks["bm1"].read_text() == "stopped\n" and marks["bm2"].read_text() == "started\n"
    assert a.daemon is not None and b.daemon is not None
    a.daemon.wait_state("standby", 30)
    b.daemon.wait_state("syncing", 30)
    synced(b, a, "after.conf", "an edit on the new active\n")
    record = json.loads((b.state / "last-operation.json").read_text())
    assert record["result"] == "done" and len(record["steps"]) == 10
    code, report = b.ha_status()
    assert code == 0, report["problems"]
    assert (report["role"]["role"], report["role"]["epoch"]) == ("active", 2)
    assert (report["peer"]["node"], report["peer"]["role"]) == ("bm1", "passive")
    assert report["last_operation"]["operation"] == "switchover bm1 -> bm2"
    shown = b.bmsync("ha", "status")
    assert "node bm2: active at epoch 2" in shown.stdout
    assert "peer bm1: passive at epoch 1" in shown.stdout
    assert "last operation: switchover bm1 -> bm2, done" in shown.stdout

    back = a.bmsync("ha", "switchover", timeout_s=300)  # from the node that is passive now
    assert_ok(back)
    assert role_of(a) == ("active", 3) and role_of(b) == ("passive", 2)
    assert holds_vip(a, pair.vip) and all(a.mounted_here().values())
    a.daemon.wait_state("syncing", 30)
    synced(a, b, "back.conf", "bm1 again\n")


def test_a_failing_step_is_undone_and_says_where_each_node_stands(pair: Pair) -> None:
    a, b = pair.nodes()
    add_services(a)
    add_services(b, start="echo will not start; exit 3")
    active_at_start(pair, services=True)

    done = a.bmsync("ha", "switchover", timeout_s=300)
    assert done.returncode == HaRefused.exit_code, done.stdout + done.stderr
    assert "switchover bm1 -> bm2 failed at step 8/10 (bm2: start the services" in done.stderr
    assert "exit status 3" in done.stderr and "will not start" in done.stderr
    assert (
        "Undone, in reverse: bm2: stop the services (ha.services.stop); bm2: release the VIP; "
        "bm2: unmount the shared storage; bm1: promote at a new epoch" in done.stderr
    )
    assert "bm1: promote at a new epoch" in done.stderr
    assert "Now: " in done.stderr and "bm1 active at epoch 2" in done.stderr
    # bm1 holds everything again, at a new epoch, and syncs
    assert role_of(a) == ("active", 2) and role_of(b)[0] == "passive"
    assert holds_vip(a, pair.vip) and not holds_vip(b, pair.vip)
    assert all(a.mounted_here().values()) and not any(b.mounted_here().values())
    assert a.daemon is not None
    a.daemon.wait_state("syncing", 30)
    synced(a, b, "after-failure.conf", "still bm1\n")
    record = json.loads((a.state / "last-operation.json").read_text())
    assert record["result"] == "failed at step 8"
    undone = [s["action"] for s in record["steps"] if s["undo"]]
    assert undone[:4] == ["services-stop", "vip-down", "storage-unmount", "promote"]
    code, report = a.ha_status()
    assert code == HaRefused.exit_code
    assert any("failed at step 8" in problem for problem in report["problems"])


def test_two_operations_never_overlap(pair: Pair) -> None:
    a, b = pair.nodes()
    for node in (a, b):
        add_services(node)
    active_at_start(pair, services=True)
    lock = (b.state / "operation.lock").open("a+")
    holder = subprocess.Popen(
        [*b.enter(), "flock", "-x", str(b.state / "operation.lock"), "sleep", "60"]
    )
    try:
        wait_for("the lock taken", lambda: _locked(b.state / "operation.lock"))
        done = a.bmsync("ha", "switchover")
        assert done.returncode != 0
        assert "another HA operation runs on this node" in done.stderr
        assert role_of(a) == ("active", 1)  # nothing done
    finally:
        holder.kill()
        holder.wait()
        lock.close()


def _locked(path: Path) -> bool:
    done = subprocess.run(["flock", "-n", "-x", str(path), "true"], check=False)
    return done.returncode != 0
