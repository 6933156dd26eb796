"""`bmsync ha takeover` on the passive node of two (tests/ha/nodes.py):
the active node frozen (SIGSTOP: its sshd accepts connections and never
answers) is fenced through its simulated BMC, which kills everything it
runs, then the passive takes the storage, the VIP and the active role; the
old active, booted again, is stale and writes nothing. Refused while the
peer answers, when the BMC refuses, and without fencing unless the
operator says the peer is off."""

from __future__ import annotations

import json
import os
import signal

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


def freeze(node: Node) -> None:
    for pid in node.pids():
        os.kill(pid, signal.SIGSTOP)  # the node's own processes, by pid


def test_takeover_of_a_frozen_active(pair: Pair) -> None:
    a, b = pair.nodes()
    active_at_start(pair)
    (a.root / "before.conf").write_text("from bm1\n")
    wait_for("before.conf on bm2", lambda: (b.root / "before.conf").exists())
    freeze(a)

    done = b.bmsync("ha", "takeover", timeout_s=300)
    assert_ok(done)
    assert "[1/5] bm2: fence the peer" in done.stdout
    assert "peer fenced: power off confirmed" in done.stdout
    assert "is the active node" in done.stdout
    assert a.bmc.power() == "off" and not a.alive()  # fenced: nothing of bm1 runs
    assert role_of(b) == ("active", 2)
    assert all(b.mounted_here().values())
    assert holds_vip(b, pair.vip)
    assert b.daemon is not None
    b.daemon.wait_state("disconnected", 30)  # its peer is off

    # bm1 comes back (powered on, booted): stale, it writes nothing on bm2
    (b.root / "on-bm2.conf").write_text("written on the new active\n")
    a.bmc.power_on()
    a.boot()
    assert role_of(a) == ("active", 1)
    assert not any(a.mounted_here().values()) and not holds_vip(a, pair.vip)
    (a.root / "old.conf").write_text("the old active must not send this\n")
    daemon = a.start()
    wait_for(
        "bm1 learning bm2's promotion",
        lambda: daemon.status()["highest_seen"] == {"epoch": 2, "node": "bm2"},
    )
    status = daemon.status()
    assert status["state"] == "suspended"
    assert status["epoch"] == 1  # below what it has seen: stale
    assert any("'bmsync demote' here if bm2 is the active node now" in c for c in status["clears"])
    assert not (b.root / "old.conf").exists()
    assert (b.root / "on-bm2.conf").read_text() == "written on the new active\n"


def test_takeover_is_refused_while_the_peer_answers(pair: Pair) -> None:
    a, b = pair.nodes()
    active_at_start(pair)
    done = b.bmsync("ha", "takeover")
    assert done.returncode == HaRefused.exit_code, done.stdout + done.stderr
    assert "the peer bm1 answers: it is not lost" in done.stderr
    assert "'bmsync ha switchover'" in done.stderr and "--force" in done.stderr
    assert role_of(b) == ("passive", 0) and a.bmc.power() == "on"

    forced = b.bmsync("ha", "takeover", "--force", timeout_s=300)
    assert_ok(forced)
    assert "takeover_forced" in forced.stderr
    assert a.bmc.power() == "off" and role_of(b) == ("active", 2)


def test_no_takeover_when_the_bmc_refuses(pair: Pair) -> None:
    a, b = pair.nodes()
    active_at_start(pair)
    (b.base / "bmc-password").write_text("wrong\n")  # what bm2 fences bm1 with
    freeze(a)
    done = b.bmsync("ha", "takeover", timeout_s=300)
    assert done.returncode == HaRefused.exit_code, done.stdout + done.stderr
    assert "failed at step 1/5 (bm2: fence the peer" in done.stderr
    assert "NOT fenced" in done.stderr
    assert role_of(b) == ("passive", 0)
    assert not any(b.mounted_here().values()) and not holds_vip(b, pair.vip)
    assert a.bmc.power() == "on"
    code, report = b.ha_status()
    assert code == HaRefused.exit_code
    assert any("failed at step 1" in problem for problem in report["problems"])


def test_without_fencing_the_operator_must_say_the_peer_is_off(pair: Pair) -> None:
    a, b = pair.nodes()
    active_at_start(pair)
    text = b.conf.read_text()
    start = text.index("  fencing:")
    end = text.index("    retries: 1\n", start) + len("    retries: 1\n")
    b.conf.write_text(text[:start] + text[end:])
    a.power_off()  # by hand: no BMC is configured on bm2

    done = b.bmsync("ha", "takeover")
    assert done.returncode == HaRefused.exit_code, done.stdout + done.stderr
    assert "has no ha.fencing" in done.stderr and "--peer-is-powered-off" in done.stderr
    assert role_of(b) == ("passive", 0)
    no_reason = b.bmsync("ha", "takeover", "--peer-is-powered-off")
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr

    said = "bm1 unplugged in the server room, checked by Ana"
    done = b.bmsync("ha", "takeover", "--peer-is-powered-off", "--reason", said, timeout_s=300)
    assert_ok(done)
    assert "peer_declared_powered_off" in done.stderr
    assert role_of(b) == ("active", 2)
    record = json.loads((b.state / "role.json").read_text())
    assert said in record["changed"]
