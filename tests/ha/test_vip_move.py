"""`bmsync ha vip up` and `down` between two network namespaces joined by a
veth pair, with the real ip and arping: the VIP answers from the node that
holds it, a second node is refused while the first holds it, and a move is
announced by gratuitous ARP (seen in the other node's neighbour table)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bmsync.core.errors import HaRefused
from tests.ha.conftest import ip, veth_pair
from tests.sshd import write_config

SUBNET = "10.232.0"
VIP = f"{SUBNET}.100"


@dataclass
class Side:
    netns: str
    iface: str
    conf: Path

    def bmsync(self, *args: str) -> subprocess.CompletedProcess[str]:
        inside = ["ip", "netns", "exec", self.netns]
        return subprocess.run(
            [*inside, sys.executable, "-m", "bmsync", "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def mac(self) -> str:
        link = ip("-o", "link", "show", "dev", self.iface, netns=self.netns)
        return link.split("link/ether ")[1].split()[0].lower()

    def holds_vip(self) -> bool:
        shown = ip("-o", "-4", "addr", "show", "dev", self.iface, netns=self.netns)
        return f" {VIP}/" in shown

    def who_answers(self) -> str:
        """The MAC that answers ARP for the VIP, asked from this side."""
        inside = ["ip", "netns", "exec", self.netns]
        done = subprocess.run(
            [*inside, "arping", "-c", "1", "-w", "3", "-I", self.iface, VIP],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.split("[")[1].split("]")[0].lower()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    with veth_pair("vip", SUBNET) as (names, ifaces):
        sides = []
        for n, (ns, iface) in enumerate(zip(names, ifaces, strict=True)):
            root = tmp_path / f"root{n}"
            root.mkdir()
            ha = ("ha:", "  vip:", f"    address: {VIP}", "    prefix: 24")
            ha += (f"    interface: {iface}", "    arp_count: 3", "    arp_interval_ms: 50")
            conf = write_config(
                tmp_path / f"bm{n + 1}.yaml", f"bm{n + 1}", root, tmp_path / f"state{n}",
                extra_top=ha,
            )  # fmt: skip
            sides.append(Side(ns, iface, conf))
        yield sides[0], sides[1]


def test_the_vip_answers_from_the_node_that_holds_it(pair: tuple[Side, Side]) -> None:
    a, b = pair
    up = a.bmsync("ha", "vip", "up")
    assert up.returncode == 0, up.stderr
    assert f"VIP {VIP} on {a.iface}: added as {VIP}/24; 3 gratuitous ARP(s) sent" in up.stdout
    assert a.holds_vip()
    assert b.who_answers() == a.mac()

    again = a.bmsync("ha", "vip", "up")  # idempotent
    assert again.returncode == 0, again.stderr
    assert "already held" in again.stdout


def test_a_second_node_is_refused_while_the_first_holds_it(pair: tuple[Side, Side]) -> None:
    a, b = pair
    assert a.bmsync("ha", "vip", "up").returncode == 0
    refused = b.bmsync("ha", "vip", "up")
    assert refused.returncode == HaRefused.exit_code, refused.stdout + refused.stderr
    assert f"{VIP} already answers from {a.mac()} on {b.iface}: another host holds it" in (
        refused.stderr
    )
    assert "'bmsync ha vip down' on that node" in refused.stderr
    assert not b.holds_vip()
    assert b.who_answers() == a.mac()


def test_a_move_is_announced_to_the_other_side(pair: tuple[Side, Side]) -> None:
    a, b = pair
    assert a.bmsync("ha", "vip", "up").returncode == 0
    # a keeps what gratuitous ARPs announce (Linux learns new neighbours
    # from them only with arp_accept)
    subprocess.run(
        ["ip", "netns", "exec", a.netns, "sysctl", "-qw", f"net.ipv4.conf.{a.iface}.arp_accept=1"],
        check=True,
    )
    down = a.bmsync("ha", "vip", "down")
    assert down.returncode == 0, down.stderr
    assert f"VIP {VIP} removed from {a.iface}" in down.stdout
    assert not a.holds_vip()
    assert "was not held" in a.bmsync("ha", "vip", "down").stdout  # idempotent

    moved = b.bmsync("ha", "vip", "up")
    assert moved.returncode == 0, moved.stderr
    assert b.holds_vip()
    # nothing on a asked for the VIP: its neighbour entry came from b's announcement
    neighbour = ip("neigh", "show", VIP, "dev", a.iface, netns=a.netns)
    assert b.mac() in neighbour.lower(), neighbour
    assert a.who_answers() == b.mac()


def test_force_takes_it_anyway_and_says_so(pair: tuple[Side, Side]) -> None:
    a, b = pair
    assert a.bmsync("ha", "vip", "up").returncode == 0
    forced = b.bmsync("ha", "vip", "up", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "vip_forced" in forced.stderr and a.mac() in forced.stderr
    assert b.holds_vip()


def test_dry_run_prints_the_commands_and_changes_nothing(pair: tuple[Side, Side]) -> None:
    a, _ = pair
    planned = a.bmsync("ha", "vip", "up", "--dry-run")
    assert planned.returncode == 0, planned.stderr
    lines = planned.stdout.splitlines()
    assert lines[0] == f"ip -o -4 addr show dev {a.iface}"
    assert lines[1].startswith(f"arping -D -c 2 -w 2 -I {a.iface} {VIP}")
    assert lines[2] == f"ip addr add {VIP}/24 dev {a.iface}"
    assert lines[3:] == [f"arping -U -c 1 -I {a.iface} {VIP}"] * 3
    assert not a.holds_vip()
    down = a.bmsync("ha", "vip", "down", "--dry-run")
    assert down.stdout.splitlines()[-1] == f"ip addr del {VIP}/24 dev {a.iface}"


def test_no_vip_configured_is_a_config_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    conf = write_config(tmp_path / "bm1.yaml", "bm1", root, tmp_path / "state")
    done = subprocess.run(
        [sys.executable, "-m", "bmsync", "-c", str(conf), "ha", "vip", "up"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no 'ha: vip:' section" in done.stderr


def test_status_shows_who_holds_the_vip(pair: tuple[Side, Side]) -> None:
    a, b = pair
    assert a.bmsync("ha", "vip", "up").returncode == 0
    shown = a.bmsync("ha", "status", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert json.loads(shown.stdout)["vip"] == {
        "address": VIP,
        "interface": a.iface,
        "held": True,
        "other_macs": [],
    }
    shown = b.bmsync("ha", "status", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert json.loads(shown.stdout)["vip"]["held"] is False
    assert json.loads(shown.stdout)["vip"]["other_macs"] == [a.mac()]
    text = b.bmsync("ha", "status")
    assert f"vip {VIP} on {b.iface}: not held here; other MACs: {a.mac()}" in text.stdout

    # both hold it (b forced it): each side's status says so, and exits 10
    assert b.bmsync("ha", "vip", "up", "--force").returncode == 0
    shown = a.bmsync("ha", "status")
    assert shown.returncode == HaRefused.exit_code
    assert f"problem: VIP {VIP} is held here and also answers from {b.mac()}" in shown.stdout
