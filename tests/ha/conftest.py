"""Two nodes, each in its own network namespace, joined by a veth pair:
each with its own sshd (whose forced command runs its agent), its own tree,
state directory and daemon. Everything is created per test and removed
after it (namespaces by name, processes by the pids started here)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_process import DaemonProcess
from tests.ha.nodes import Pair, two_nodes
from tests.sshd import Sshd, write_config

SUBNET = "10.231.0"
VIP = f"{SUBNET}.100"


def ip(*args: str, netns: str | None = None) -> str:
    where = ["-n", netns] if netns else []
    done = subprocess.run(["ip", *where, *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(where + list(args))}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Node:
    name: str  # bmsync node id, bm1 / bm2
    netns: str
    iface: str
    address: str
    base: Path
    root: Path = field(init=False)
    state: Path = field(init=False)
    conf: Path = field(init=False)
    sshd: Sshd = field(init=False)
    daemon: DaemonProcess | None = None

    def __post_init__(self) -> None:
        self.root = self.base / "root"
        self.state = self.base / "state"
        self.conf = self.base / "bmsync.yaml"
        self.root.mkdir(parents=True)
        self.sshd = Sshd.create(self.base / "sshd", self.address, self.netns)

    def configure(
        self, peer: Node, vip: bool = False, promote: bool = False, vip_iface: str | None = None
    ) -> None:
        """``vip_iface``: the interface the VIP check uses (this node's veth
        by default)."""
        iface = vip_iface or self.iface
        vip_lines = ("ha:", "  vip:", f"    address: {VIP}", f"    interface: {iface}")
        extra = [*vip_lines, "    check_interval_s: 0.5"] if vip else []
        write_config(
            self.conf,
            self.name,
            self.root,
            self.state,
            peer.sshd,
            promote=promote,
            extra_top=tuple(extra),
            # a cut link is noticed in seconds, not minutes
            extra_peer=("keepalive_interval_s: 1",),
        )
        # the peer's sshd lets this node's key in, forced to run the peer's agent
        peer.sshd.authorize(peer.conf)

    def bmsync(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._process().bmsync(*args)

    def status(self) -> dict[str, Any]:
        return self._process().status()

    def _process(self) -> DaemonProcess:
        return DaemonProcess(self.conf, self.base / "daemon.log", netns=self.netns, name=self.name)

    def start(self) -> None:
        self.daemon = self._process().start()

    def stop(self) -> int | None:
        code = self.daemon.stop() if self.daemon is not None else None
        self.daemon = None
        return code

    def log(self) -> str:
        return self._process().log(4000)

    def wait_state(self, state: str, timeout_s: float) -> dict[str, Any]:
        assert self.daemon is not None, f"{self.name} was not started"
        return self.daemon.wait_state(state, timeout_s)

    def wait_reason(self, state: str, reason: str, timeout_s: float) -> dict[str, Any]:
        assert self.daemon is not None, f"{self.name} was not started"
        return self.daemon.wait_reason(state, reason, timeout_s)


@dataclass
class Cluster:
    a: Node
    b: Node

    def cut(self) -> None:
        ip("link", "set", self.a.iface, "down", netns=self.a.netns)

    def heal(self) -> None:
        ip("link", "set", self.a.iface, "up", netns=self.a.netns)
        ip("link", "set", self.b.iface, "up", netns=self.b.netns)


@contextmanager
def veth_pair(prefix: str, subnet: str) -> Iterator[tuple[tuple[str, str], tuple[str, str]]]:
    """Two network namespaces joined by a veth pair, SUBNET.1 and SUBNET.2
    (/24) on its ends: (namespaces, interfaces), named after this process
    so that runs do not collide; deleted after (by name)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"{os.getpid() % 100000}"
    names = (f"{prefix}A{tag}", f"{prefix}B{tag}")
    ifaces = (f"{prefix}vA{tag}", f"{prefix}vB{tag}")
    created: list[str] = []
    try:
        for ns in names:
            ip("netns", "add", ns)
            created.append(ns)
            ip("link", "set", "lo", "up", netns=ns)
        ip(
            "link", "add", ifaces[0], "netns", names[0], "type", "veth",
            "peer", "name", ifaces[1], "netns", names[1],
        )  # fmt: skip
        for number, (ns, iface) in enumerate(zip(names, ifaces, strict=True), start=1):
            ip("addr", "add", f"{subnet}.{number}/24", "dev", iface, netns=ns)
            ip("link", "set", iface, "up", netns=ns)
        yield names, ifaces
    finally:
        for ns in created:
            ip("netns", "del", ns)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """bm1 (promoted, active) in one namespace, bm2 (passive) in another,
    each sshd started; the daemons are the tests' to start."""
    with veth_pair("bm", SUBNET) as (names, ifaces):
        a = Node("bm1", names[0], ifaces[0], f"{SUBNET}.1", tmp_path / "bm1")
        b = Node("bm2", names[1], ifaces[1], f"{SUBNET}.2", tmp_path / "bm2")
        nodes = [a, b]
        try:
            a.configure(b, promote=True)
            b.configure(a)
            for node in nodes:
                node.sshd.start()
            yield Cluster(a, b)
        finally:
            for node in nodes:
                node.stop()
                node.sshd.stop()


NODES_SUBNET = "10.232.0"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """Two nodes as two machines (tests/ha/nodes.py): bm1 (promoted) and
    bm2, each a network namespace plus one persistent mount namespace, its
    sshd running, shared ext4 loop devices mounted by neither, and a
    simulated BMC that the other node fences it through; no daemon."""
    with (
        veth_pair("tn", NODES_SUBNET) as (names, ifaces),
        two_nodes(tmp_path, names, ifaces, NODES_SUBNET) as nodes,
    ):
        yield nodes
