"""The two-node test bed of the takeover tests (tests/ha/nodes.py), proved
with the commands that exist today: each node mounts the shared storage in
its own mount table only; a node asks its peer over SSH before mounting;
``bmsync ha fence`` on one node powers the other off through its simulated
BMC, and then nothing of it is left (processes, mounts, addresses), so the
survivor takes the storage and the VIP; the fenced node boots again with
nothing mounted."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from bmsync.core.errors import HaRefused
from tests.ha.nodes import Node, Pair, assert_ok, device_in_use, needs_two_nodes, wait_for

pytestmark = needs_two_nodes()


def mounted_in_test_process(device: str) -> bool:
    major_minor = subprocess.run(
        ["stat", "-L", "-c", "%t:%T", device], capture_output=True, text=True, check=True
    ).stdout.strip()
    major, minor = (int(part, 16) for part in major_minor.split(":"))
    wanted = f"{major}:{minor}"
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return any(line.split(" ")[2] == wanted for line in lines)


def exited(process: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: process.poll() is not None


def mount(node: Node, *extra: str) -> subprocess.CompletedProcess[str]:
    return node.bmsync("ha", "storage", "mount", *extra)


def test_each_node_mounts_the_shared_storage_in_its_own_namespace_only(pair: Pair) -> None:
    a, b = pair.nodes()
    everywhere = dict.fromkeys(map(str, pair.mounts), True)
    nowhere = dict.fromkeys(map(str, pair.mounts), False)
    assert a.mounted_here() == nowhere and b.mounted_here() == nowhere

    done = mount(a)
    assert_ok(done)
    assert "peer=bm2" in done.stderr  # bm2's agent, behind its sshd, was asked
    assert a.mounted_here() == everywhere
    assert b.mounted_here() == nowhere
    for device, where in zip(pair.devices, pair.mounts, strict=True):
        assert a.mounts_of(device) == [str(where)]
        assert b.mounts_of(device) == []
        assert not mounted_in_test_process(device)
    mailbox = pair.mounts[0] / "mailbox"
    assert_ok(a.run("sh", "-c", f"echo written-on-bm1 > {mailbox}"))
    assert not mailbox.exists()  # the test process sees the empty mount point
    assert b.run("cat", str(mailbox)).returncode != 0

    assert_ok(a.bmsync("ha", "storage", "unmount"))
    assert a.mounted_here() == nowhere
    assert_ok(mount(b))
    assert b.mounted_here() == everywhere and a.mounted_here() == nowhere
    # one SAN: what bm1 wrote is on the disk bm2 mounted
    assert b.run("cat", str(mailbox)).stdout == "written-on-bm1\n"
    assert_ok(b.bmsync("ha", "storage", "unmount"))


def test_a_node_asks_its_peer_and_is_refused_while_the_peer_holds_the_storage(
    pair: Pair,
) -> None:
    a, b = pair.nodes()
    assert_ok(mount(a))
    for extra in ((), ("--peer-is-down",)):
        done = mount(b, *extra)
        assert done.returncode == HaRefused.exit_code, done.stdout + done.stderr
        assert f"{pair.devices[0]} is mounted on the peer bm1 ({pair.mounts[0]})" in done.stderr
        assert "--peer-is-down does not apply" in done.stderr
        assert not any(b.mounted_here().values())
        assert all(a.mounted_here().values())


def test_fencing_powers_the_peer_off_for_real_and_the_survivor_takes_over(pair: Pair) -> None:
    a, b = pair.nodes()
    # bm1 holds everything: the VIP, the storage (one mount kept busy by a
    # process), and runs its daemon
    assert_ok(a.bmsync("ha", "vip", "up"))
    assert_ok(mount(a))
    a.start().check()
    holder = subprocess.Popen(
        [*a.enter(), "sh", "-c", f"cd {pair.mounts[0]} && exec sleep 600"],
        stdin=subprocess.DEVNULL,
    )
    assert a.sshd.process is not None and a.daemon is not None
    assert a.daemon.process is not None
    started: dict[str, subprocess.Popen[bytes]] = {
        "sshd": a.sshd.process,
        "daemon": a.daemon.process,
        "holder": holder,
    }
    wait_for("the holder runs on bm1", lambda: holder.pid in a.pids())
    assert a.sshd.process.pid in a.pids() and a.daemon.pid in a.pids()
    assert all(device_in_use(device) for device in pair.devices)
    # bm2 cannot take the VIP from a bm1 that answers for it
    refused = b.bmsync("ha", "vip", "up")
    assert refused.returncode == HaRefused.exit_code, refused.stdout + refused.stderr

    done = b.bmsync("ha", "fence")
    assert_ok(done)
    assert done.stdout.startswith("peer fenced: power off confirmed"), done.stdout
    assert a.bmc.power() == "off"
    # really gone: every process of bm1 was killed, its mounts released
    for what, process in started.items():
        wait_for(f"bm1's {what} is killed", exited(process))
        assert process.returncode == -signal.SIGKILL, (what, process.returncode)
    assert not a.alive(), a.bmc.hook_log()
    wait_for(
        "bm1's filesystems are unmounted",
        lambda: not any(device_in_use(device) for device in pair.devices),
    )

    # the survivor: bm1 cannot be asked any more, so it takes the storage
    # only when told the peer is down, then the VIP with no --force
    done = mount(b)
    assert done.returncode == HaRefused.exit_code, done.stdout + done.stderr
    assert "cannot ask the peer whether it has it mounted" in done.stderr
    assert_ok(mount(b, "--peer-is-down"))
    assert all(b.mounted_here().values())
    assert_ok(b.bmsync("ha", "vip", "up"))
    shown = b.run("ip", "-o", "-4", "addr", "show", "dev", b.iface)
    assert f" {pair.vip}/24 " in shown.stdout
    code, report = b.ha_status()
    assert (code, report["peer_power"]["power"], report["problems"]) == (0, "off", []), report

    # bm1 powered on runs nothing until booted; booted, it holds nothing,
    # and asking bm2 it is refused the storage bm2 took
    a.bmc.power_on()
    assert not a.alive()
    a.boot()
    assert not any(a.mounted_here().values())
    assert all(a.mounts_of(device) == [] for device in pair.devices)
    done = mount(a)
    assert done.returncode == HaRefused.exit_code, done.stdout + done.stderr
    assert f"is mounted on the peer bm2 ({pair.mounts[0]})" in done.stderr
    assert b.ha_status()[1]["peer_power"]["power"] == "on"
