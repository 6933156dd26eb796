"""The split-brain guard between two nodes in their own network
namespaces, each with its own sshd, state directory and daemon."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from bmsync.config.model import VipConfig
from bmsync.core.observations import VipCheckFailed, VipSeen
from bmsync.ha.vip import observe_vip, run_command
from tests.ha.conftest import VIP, Cluster, Node, ip
from tests.helpers import walk


def tree(node: Node) -> dict[str, object]:
    return walk(node.root)


def wait_identical(a: Node, b: Node, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if tree(a) == tree(b):
            return
        time.sleep(0.1)
    raise AssertionError(f"not identical after {timeout_s} s\n{a.log()}")


def wait_another_handshake(node: Node, status: dict[str, object], timeout_s: float) -> None:
    """Until the daemon has asked its peer again since ``status``: a
    suspended daemon asks every reconnect_max_s."""
    deadline = time.monotonic() + timeout_s
    while node.status()["last_contact"] == status["last_contact"]:
        assert time.monotonic() < deadline, f"{node.name} did not ask again\n{node.log()}"
        time.sleep(0.1)


def test_both_promoted_neither_writes_and_both_suspend(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    b.configure(a, promote=True)  # the second operator, during a partition
    for node in (a, b):
        (node.root / "etc").mkdir()
        (node.root / "etc" / f"{node.name}.conf").write_text(f"written on {node.name}\n")
    a.start()
    b.start()
    for node, peer in ((a, b), (b, a)):
        status = node.wait_state("suspended", timeout_s=60)
        assert f"split-brain suspected: {peer.name} claims active too" in status["reason"]
        assert status["clears"]
        wait_another_handshake(node, status, timeout_s=60)  # refused again, still suspended
    for node, peer in ((a, b), (b, a)):
        assert not (peer.root / "etc" / f"{node.name}.conf").exists()
        assert node.status()["state"] == "suspended"


def test_the_old_active_returning_is_refused_and_stale(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    (a.root / "etc").mkdir()
    (a.root / "etc" / "app.conf").write_text("v1\n")
    a.start()
    a.wait_state("syncing", timeout_s=20)
    wait_identical(a, b, 5)
    assert a.daemon is not None
    a.daemon.kill()  # bm1 dies; bm2 takes over
    a.daemon = None
    assert "active at epoch 2" in b.bmsync("promote").stdout
    (b.root / "etc" / "app.conf").write_text("v2, written on the new active\n")
    (a.root / "etc" / "app.conf").write_text("v1b, on the old active\n")
    (a.root / "etc" / "new.conf").write_text("only on the old active\n")
    before = tree(b)

    a.start()  # bm1 comes back, still believing it is active at epoch 1
    status = a.wait_state("suspended", timeout_s=60)
    assert "this node is stale" in status["reason"]
    assert status["highest_seen"] == {"epoch": 2, "node": "bm2"}
    time.sleep(1.0)
    assert tree(b) == before
    assert a.stop() == 0
    assert "stale" in (a.status()["reason"] or "")  # persisted, daemon stopped


def test_a_link_cut_for_20_s_queues_changes_and_converges_without_suspension(
    cluster: Cluster,
) -> None:
    a, b = cluster.a, cluster.b
    etc = a.root / "etc"
    etc.mkdir()
    a.start()
    a.wait_state("syncing", timeout_s=20)
    cluster.cut()
    states = set()
    for i in range(10):  # 20 s of changes while the link is down
        (etc / f"during-{i}.conf").write_text(f"{i}\n")
        if i == 5:
            (etc / "during-0.conf").unlink()
        time.sleep(2.0)
        states.add(a.status()["state"])
    assert "suspended" not in states and "disconnected" in states, states
    assert not (b.root / "etc" / "during-9.conf").exists()
    cluster.heal()
    wait_identical(a, b, 20)
    status = a.wait_state("syncing", timeout_s=10)
    assert status["reason"] is None


def _mac(node: Node) -> str:
    out = ip("-o", "link", "show", "dev", node.iface, netns=node.netns)
    return out.split("link/ether ")[1].split()[0]


def test_the_vip_answered_from_the_other_namespace_suspends(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    a.configure(b, vip=True, promote=True)
    ip("addr", "add", f"{VIP}/24", "dev", a.iface, netns=a.netns)
    ip("addr", "add", f"{VIP}/24", "dev", b.iface, netns=b.netns)  # bm2 claims it too
    (a.root / "etc").mkdir()
    a.start()
    a.wait_reason("suspended", f"the VIP also answers from {_mac(b)}", timeout_s=60)
    (a.root / "etc" / "held.conf").write_text("not while the VIP is disputed\n")
    time.sleep(1.0)
    assert not (b.root / "etc" / "held.conf").exists()

    ip("addr", "del", f"{VIP}/24", "dev", b.iface, netns=b.netns)
    # clean VIP check, then the peer confirmed passive at the next handshake
    a.wait_state("syncing", timeout_s=20)
    wait_identical(a, b, 10)
    assert Path(b.root / "etc" / "held.conf").read_text() == "not while the VIP is disputed\n"


def check_vip(node: Node, iface: str) -> VipSeen | VipCheckFailed:
    """The daemon's VIP check, run with the real ip and arping in ``node``'s
    namespace."""

    async def inside(argv: Sequence[str]) -> tuple[int, str]:
        return await run_command(["ip", "netns", "exec", node.netns, *argv])

    return asyncio.run(observe_vip(VipConfig(VIP, iface), inside))


def test_the_vip_check_with_the_real_ip_and_arping(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    ip("addr", "add", f"{VIP}/24", "dev", a.iface, netns=a.netns)
    assert check_vip(a, a.iface) == VipSeen(held=True)  # arping -D: exit 0, no reply
    ip("addr", "add", f"{VIP}/24", "dev", b.iface, netns=b.netns)
    seen = check_vip(a, a.iface)  # exit 1: a reply, from bm2
    assert seen == VipSeen(held=True, other_macs=(_mac(b).lower(),))

    missing = check_vip(a, "bmnope0")  # ip fails: no such interface
    assert isinstance(missing, VipCheckFailed)
    assert "ha.vip.interface bmnope0: 'ip addr show' failed" in missing.reason
    ip("link", "add", "bmdown0", "type", "veth", "peer", "name", "bmdown1", netns=a.netns)
    down = check_vip(a, "bmdown0")  # ip works, arping exits 2: the interface is down
    assert isinstance(down, VipCheckFailed)
    assert "ha.vip.interface bmdown0: arping -D" in down.reason
    assert "could not check (exit status 2" in down.reason and "down" in down.reason


def test_a_vip_check_that_cannot_run_suspends_until_it_works_again(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    # the VIP's interface exists, so `ip` answers, but it is down: arping cannot check
    ip("link", "add", "bmvip0", "type", "veth", "peer", "name", "bmvip1", netns=a.netns)
    a.configure(b, vip=True, promote=True, vip_iface="bmvip0")
    (a.root / "etc").mkdir()
    (a.root / "etc" / "app.conf").write_text("not before the VIP is checked\n")
    a.start()
    status = a.wait_reason(
        "suspended", "split-brain cannot be ruled out: ha.vip.interface bmvip0", 60
    )
    assert "could not check" in status["reason"] and "down" in status["reason"]
    assert any("the VIP check working again" in c for c in status["clears"])
    assert a.bmsync("status").returncode == 1
    wait_another_handshake(a, status, timeout_s=60)  # the peer is asked again: still nothing
    assert not (b.root / "etc").exists()
    assert a.status()["state"] == "suspended"

    # the administrator fixes it: the interface up, the VIP on it
    ip("addr", "add", f"{VIP}/24", "dev", "bmvip0", netns=a.netns)
    ip("link", "set", "bmvip0", "up", netns=a.netns)
    status = a.wait_state("syncing", timeout_s=60)
    assert status["reason"] is None
    wait_identical(a, b, 30)


def test_a_file_edited_on_the_passive_is_kept_reported_then_overwritten(
    cluster: Cluster,
) -> None:
    a, b = cluster.a, cluster.b
    etc = a.root / "etc"
    etc.mkdir()
    (etc / "app.conf").write_text("port 8080\n")
    a.start()
    a.wait_state("syncing", timeout_s=20)
    wait_identical(a, b, 5)
    (b.root / "etc" / "app.conf").write_text("port 9999  # by hand on bm2\n")
    (etc / "app.conf").write_text("port 8081\n")  # the next change from the active
    wait_identical(a, b, 5)
    status = a.status()
    (kept,) = status["backups"]
    assert kept["path"].endswith("etc/app.conf")
    copy = Path(kept["kept"])
    assert copy.is_relative_to(b.state / "backups")
    assert copy.read_text() == "port 9999  # by hand on bm2\n"
    assert "changed on the passive node, copies kept there" in a.bmsync("status").stdout


def test_the_advice_for_an_active_node_without_the_vip_works(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    a.configure(b, vip=True, promote=True)
    (a.root / "etc").mkdir()
    (a.root / "etc" / "app.conf").write_text("not before this node holds the VIP\n")
    a.start()
    status = a.wait_reason("suspended", "does not hold the VIP", timeout_s=60)
    (advice,) = status["clears"]
    assert "this node holding the VIP again ('ip addr add' it here)" in advice
    assert not (b.root / "etc").exists()
    ip("addr", "add", f"{VIP}/24", "dev", a.iface, netns=a.netns)  # the advice, followed
    a.wait_state("syncing", timeout_s=60)
    wait_identical(a, b, 30)


def test_the_advice_for_a_vip_check_that_cannot_run_works(cluster: Cluster) -> None:
    """A typo in ha.vip.interface: fixing the config and reloading (SIGHUP,
    what 'systemctl reload bmsync' sends) is enough."""
    a, b = cluster.a, cluster.b
    a.configure(b, vip=True, promote=True, vip_iface="bmtypo0")
    ip("addr", "add", f"{VIP}/24", "dev", a.iface, netns=a.netns)
    (a.root / "etc").mkdir()
    (a.root / "etc" / "app.conf").write_text("not before the VIP is checked\n")
    a.start()
    status = a.wait_reason("suspended", "ha.vip.interface bmtypo0", timeout_s=60)
    (advice,) = status["clears"]
    assert "fix ha.vip in the config and 'systemctl reload bmsync'" in advice
    a.configure(b, vip=True, promote=True)  # the right interface
    assert a.daemon is not None
    a.daemon.send_signal(signal.SIGHUP)
    a.wait_state("syncing", timeout_s=60)
    wait_identical(a, b, 30)
