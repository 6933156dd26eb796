"""Two test nodes as close to two machines as one kernel allows, for the
takeover tests: each node is a network namespace AND one persistent mount
namespace shared by all its processes (its sshd and the agents it runs,
its daemon, every command run "on" it), private from the other node and
from the test process; both see the same loop devices (one SAN) and each
has a simulated BMC (ipmi_sim) that its peer fences it through. Powering
a node off through its BMC kills every process of the node and drops its
mounts: "fenced" means really gone.

Why not ``ip netns exec``: it unshares the mount namespace on every call
(to remount /sys), so a ``bmsync ha storage mount`` run through it mounts
into a namespace that disappears when the command exits. A node's mount
namespace is made once, kept by a bind mount of its nsfs file
(``unshare --mount=FILE``, in a private bind-mounted directory, as
``ip netns`` keeps /run/netns), and entered with ``nsenter --net=...
--mount=FILE``.

Everything is named after the test process (pid) and removed by what
created it: mount namespaces by their files, processes by namespace or pid.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_process import DaemonProcess
from tests.ha import power
from tests.loopfs import loop_device
from tests.sshd import Sshd, write_config

SIM_FILES = Path(__file__).parent / "ipmi_sim"
POWER_SCRIPT = Path(__file__).parent / "power.py"
BMC_USER, BMC_PASSWORD = "u", "p"  # lan.conf's
TOOLS = ("ipmi_sim", "ipmitool", "unshare", "nsenter", "losetup", "mkfs.ext4", "e2fsck", "fuser")
DEADLINE_S = 15.0


def needs_two_nodes() -> pytest.MarkDecorator:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    reason = (
        "needs root"
        if os.geteuid() != 0
        else f"needs {', '.join(missing)} (apt-get install openipmi ipmitool util-linux "
        "e2fsprogs psmisc)"
    )
    return pytest.mark.skipif(os.geteuid() != 0 or bool(missing), reason=reason)


def _run(argv: Sequence[str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


# Run inside a new mount namespace before any process of the node: drop
# what the copy of the test process's mount table holds that is not the
# node's (the other nodes' namespace files, /run/netns with every network
# namespace of this machine, loop devices mounted here by anyone), so that
# this namespace pins nothing of theirs; then a sysfs of the node's network
# namespace on /sys, as ``ip netns exec`` does.
_INIT = textwrap.dedent(
    """
    import subprocess, sys
    nsdir = sys.argv[1]
    drop = []
    for line in open("/proc/self/mountinfo"):
        fields = line.split(" ")
        sep = fields.index("-")
        point = fields[4].replace("\\\\040", " ")
        fstype, source = fields[sep + 1], fields[sep + 2]
        if (point == nsdir or point.startswith(nsdir + "/") or point == "/run/netns"
                or fstype == "nsfs" or source.startswith("/dev/loop")):
            drop.append(point)
    for point in sorted(set(drop), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    subprocess.run(["umount", "-l", "/sys"], check=True)
    subprocess.run(["mount", "-t", "sysfs", "sysfs", "/sys"], check=True)
    """
)


@contextmanager
def namespace_directory(path: Path) -> Iterator[Path]:
    """A directory bind-mounted on itself and made private, to hold the
    nodes' mount namespace files (a namespace file cannot be bound where
    mounts propagate); unmounted and removed after."""
    path.mkdir(parents=True)
    try:
        _run(["mount", "--bind", str(path), str(path)])
        try:
            _run(["mount", "--make-private", str(path)])
            yield path
        finally:
            _run(["umount", str(path)])
    finally:
        shutil.rmtree(path)


@dataclass
class Bmc:
    """A node's BMC: an ipmi_sim in the PEER's network namespace on
    127.0.0.1:``port`` (where the peer fences it from; a BMC is on the
    management network, not on the node, and survives its power-off), whose
    chassis script powers the node off for real (tests/ha/power.py)."""

    directory: Path
    netns: str  # the peer's: where it listens
    port: int
    password_file: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def state(self) -> Path:
        return self.directory / "power.state"

    def power(self) -> str:
        """What the simulated machine's power is ("on" until set)."""
        if not self.state.exists():
            return "on"
        return {"1": "on", "0": "off"}[self.state.read_text().strip()]

    def ipmitool(self, *args: str) -> subprocess.CompletedProcess[str]:
        """ipmitool against this BMC from where it listens (the peer's network)."""
        argv = [
            "nsenter", f"--net=/run/netns/{self.netns}", "--",
            "ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(self.port),
            "-U", BMC_USER, "-f", str(self.password_file), "-N", "1", "-R", "1", *args,
        ]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    def power_on(self) -> None:
        """Power on, as an administrator would through the BMC: nothing of the
        node starts (booting it is ``Node.boot``)."""
        done = self.ipmitool("chassis", "power", "on")
        assert done.returncode == 0, done.stdout + done.stderr
        assert self.power() == "on"

    def start(self, hook: Path) -> None:
        lan = (SIM_FILES / "lan.conf").read_text()
        lan = lan.replace("127.0.0.1 9624", f"127.0.0.1 {self.port}")
        lan = lan.replace(
            '"SIMDIR/chassis.sh SIMDIR/power.state"',
            f'"{self.directory}/node_chassis.sh {self.state} {hook}"',
        )
        assert str(hook) in lan, "lan.conf's chassis_control line changed"
        self.directory.mkdir(parents=True)
        (self.directory / "lan.conf").write_text(lan)
        for name in ("sim.emu", "chassis.sh", "node_chassis.sh"):
            shutil.copy(SIM_FILES / name, self.directory / name)
        (self.directory / "state").mkdir()
        with (self.directory / "sim.log").open("wb") as log:
            self.process = subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/run/netns/{self.netns}",
                    "--",
                    "ipmi_sim",
                    "-c",
                    str(self.directory / "lan.conf"),
                    "-f",
                    str(self.directory / "sim.emu"),
                    "-s",
                    str(self.directory / "state"),
                    "-n",
                    "-p",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + DEADLINE_S
        while (
            "Chassis Power is" not in (answer := self.ipmitool("chassis", "power", "status")).stdout
        ):
            sim_log = (self.directory / "sim.log").read_text()
            assert self.process.poll() is None, f"ipmi_sim exited: {sim_log}"
            assert time.monotonic() < deadline, f"ipmi_sim does not answer: {answer}\n{sim_log}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def hook_log(self) -> str:
        log = Path(f"{self.state}.hook.log")
        return log.read_text() if log.exists() else ""


@dataclass
class Node:
    """One machine: network namespace ``netns`` and the mount namespace kept
    on ``mntns`` (live between ``boot`` and ``power_off``). ``run`` and
    ``bmsync`` run a command on it; its sshd lets the peer's key in, forced
    to run this node's agent (as on a real node)."""

    name: str  # bmsync node id
    netns: str
    iface: str
    address: str
    base: Path
    mntns: Path
    root: Path = field(init=False)
    state: Path = field(init=False)
    conf: Path = field(init=False)
    sshd: Sshd = field(init=False)
    bmc: Bmc = field(init=False)
    daemon: DaemonProcess | None = None

    def __post_init__(self) -> None:
        self.root = self.base / "root"
        self.state = self.base / "state"
        self.conf = self.base / "bmsync.yaml"
        self.root.mkdir(parents=True)
        self.sshd = Sshd.create(self.base / "sshd", self.address)
        self.sshd.launcher = tuple(self.enter())

    def enter(self) -> list[str]:
        """The argv prefix that runs a command on this node."""
        return [
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            f"--mount={self.mntns}",
            f"--wd={self.base}",
            "--",
        ]

    def alive(self) -> bool:
        """Powered and booted: its mount namespace exists."""
        return power.is_live(self.mntns)

    def boot(self) -> None:
        """A fresh mount namespace (a booted machine mounts nothing yet of
        the shared storage) and its sshd; the daemon is the test's to start.
        Refused while its BMC says the power is off."""
        assert not self.alive(), f"{self.name} is running already"
        assert self.bmc.power() == "on", f"{self.name} is powered off: power it on first"
        self.reap()
        ip = ["ip", "-n", self.netns]
        addresses = _run([*ip, "-o", "-4", "addr", "show", "dev", self.iface]).stdout
        if f" {self.address}/" not in addresses:  # flushed by the power-off
            _run([*ip, "addr", "add", f"{self.address}/24", "dev", self.iface])
        self.mntns.touch()
        _run(
            [
                "nsenter", f"--net=/run/netns/{self.netns}", "--",
                "unshare", f"--mount={self.mntns}", "--propagation", "private", "--",
                sys.executable, "-c", _INIT, str(self.mntns.parent),
            ]
        )  # fmt: skip
        self.sshd.start()

    def power_off(self) -> list[int]:
        """What the BMC's power-off does (tests/ha/power.py), without the
        BMC: for the cleanup, or a test that cuts the power by hand."""
        killed = power.power_off(self.mntns, self.netns)
        self.reap()
        return killed

    def reap(self) -> None:
        """Collect the exit of the processes started here that a power-off
        killed (their pids are then free again)."""
        self.sshd.stop()
        self.stop()

    def pids(self) -> list[int]:
        """Every process running on this node."""
        return power.pids_in(self.mntns) if self.alive() else []

    def run(self, *argv: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        assert self.alive(), f"{self.name} is not running"
        return subprocess.run(
            [*self.enter(), *argv], capture_output=True, text=True, timeout=timeout_s
        )

    def bmsync(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """``bmsync -c CONF ARGS`` run on this node (logs at info, on stderr)."""
        argv = [sys.executable, "-m", "bmsync", "-c", str(self.conf), "--log-level", "info"]
        return self.run(*argv, *args, timeout_s=timeout_s)

    def ha_status(self) -> tuple[int, dict[str, Any]]:
        """``bmsync ha status --json`` on this node: (exit code, report)."""
        done = self.bmsync("ha", "status", "--json")
        try:
            return done.returncode, json.loads(done.stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"ha status printed no JSON: {done.stdout}{done.stderr}") from exc

    def mounted_here(self) -> dict[str, bool]:
        """Each ``ha.storage`` mount point: mounted on this node, as its
        ``bmsync ha status`` says."""
        _, report = self.ha_status()
        return {entry["mount"]: entry["mounted_here"] for entry in report["storage"]}

    def mounts_of(self, device: str) -> list[str]:
        """Where ``device`` is mounted in this node's mount table."""
        number = os.stat(device).st_rdev
        wanted = f"{os.major(number)}:{os.minor(number)}"
        done = self.run("cat", "/proc/self/mountinfo")
        assert done.returncode == 0, done.stderr
        lines = [line.split(" ") for line in done.stdout.splitlines()]
        return [fields[4] for fields in lines if fields[2] == wanted]

    def _daemon(self) -> DaemonProcess:
        return DaemonProcess(
            self.conf, self.base / "daemon.log", launcher=self.enter(), name=self.name
        )

    def start(self) -> DaemonProcess:
        """``bmsync run`` on this node."""
        self.daemon = self._daemon().start()
        return self.daemon

    def stop(self) -> int | None:
        code = self.daemon.stop() if self.daemon is not None else None
        self.daemon = None
        return code


@dataclass
class Pair:
    """bm1 (``a``, promoted: active) and bm2 (``b``, passive), both booted,
    sshd running, no daemon; ``devices``: the shared ext4 loop devices,
    mounted by neither; ``mounts``: their mount points (the same paths on
    both nodes, as on two real machines)."""

    a: Node
    b: Node
    devices: list[str]
    mounts: list[Path]
    vip: str

    def nodes(self) -> tuple[Node, Node]:
        return self.a, self.b


def device_in_use(device: str) -> bool:
    """Whether the kernel holds ``device`` for a mounted filesystem, in ANY
    mount namespace: an exclusive open is then refused (EBUSY), the check
    e2fsck and mount make too."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_EXCL)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return True
        raise
    os.close(fd)
    return False


def wait_for(what: str, condition: Callable[[], bool], deadline_s: float = DEADLINE_S) -> None:
    """Poll ``condition()`` until true, or fail saying ``what`` was awaited."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {deadline_s} s: {what}"
        time.sleep(0.05)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _ha_lines(node: Node, peer: Node, pair_mounts: list[tuple[str, Path]], vip: str) -> list[str]:
    lines = ["ha:", "  vip:", f"    address: {vip}", f"    interface: {node.iface}"]
    lines += ["    prefix: 24", "    arp_count: 1", "    arp_interval_ms: 10", "  storage:"]
    for device, mount in pair_mounts:
        lines += [f"    - device: {device}", f"      mount: {mount}", "      fstype: ext4"]
        lines += ["      kill_grace_s: 1"]
    lines += [
        "  fencing:  # powers off the PEER, through its BMC",
        "    method: ipmi",
        "    tool: ipmitool",
        "    address: 127.0.0.1",
        f"    port: {peer.bmc.port}",
        f"    user: {BMC_USER}",
        f"    password_file: {node.base / 'bmc-password'}",
        "    timeout_s: 5",
        "    retries: 1",
    ]
    return lines


@contextmanager
def two_nodes(
    tmp_path: Path, netns: tuple[str, str], ifaces: tuple[str, str], subnet: str
) -> Iterator[Pair]:
    """The pair, on the network namespaces ``netns`` joined by ``ifaces``
    (tests/ha/conftest.veth_pair: SUBNET.1 and SUBNET.2); everything undone
    after, in this order: BMCs stopped, both nodes powered off (every process
    killed, mount namespaces freed, so their mounts are gone), the namespace
    directory unmounted, the loop devices detached."""
    tag = f"{os.getpid() % 100000}"
    with ExitStack() as stack:
        devices = [
            stack.enter_context(loop_device(tmp_path / f"shared{i}.img", "ext4")) for i in (1, 2)
        ]
        nsdir = stack.enter_context(namespace_directory(Path(f"/run/bmsync-test-mntns-{tag}")))
        nodes = [
            Node(name, ns, iface, f"{subnet}.{number}", tmp_path / name, nsdir / name)
            for number, (name, ns, iface) in enumerate(
                zip(("bm1", "bm2"), netns, ifaces, strict=True), start=1
            )
        ]
        a, b = nodes
        for node, peer in ((a, b), (b, a)):
            node.bmc = Bmc(
                tmp_path / f"{node.name}-bmc",
                peer.netns,
                _free_udp_port(),
                peer.base / "bmc-password",
            )
        for node in nodes:
            stack.callback(node.power_off)  # after the BMCs stop (callbacks run in reverse)
        shared = tmp_path / "srv"
        mounts = [shared / "cyrus", shared / "postgresql"]
        vip = f"{subnet}.100"
        for node in nodes:
            password = node.base / "bmc-password"
            password.write_text(BMC_PASSWORD + "\n")
            password.chmod(0o600)
        for node in nodes:
            hook = node.base / "power-off"
            off = f"{sys.executable} {POWER_SCRIPT} off {node.mntns} {node.netns}"
            hook.write_text(f"#!/bin/sh\nexec {off}\n")
            hook.chmod(0o755)
            stack.callback(node.bmc.stop)
            node.bmc.start(hook)
        for node, peer in ((a, b), (b, a)):
            write_config(
                node.conf,
                node.name,
                node.root,
                node.state,
                peer.sshd,
                promote=node is a,
                extra_top=tuple(
                    _ha_lines(node, peer, list(zip(devices, mounts, strict=True)), vip)
                ),
                extra_peer=("keepalive_interval_s: 1",),
            )
            peer.sshd.authorize(peer.conf)
        for node in nodes:
            node.boot()
        yield Pair(a, b, devices, mounts, vip)


def assert_ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def role_of(node: Node) -> tuple[str, int]:
    """(role, epoch) as ``bmsync status`` on ``node`` says."""
    status = json.loads(node.bmsync("status", "--json").stdout)
    return status["role"], status["epoch"]


def holds_vip(node: Node, vip: str) -> bool:
    shown = node.run("ip", "-o", "-4", "addr", "show", "dev", node.iface)
    return f" {vip}/" in shown.stdout


def active_at_start(pair: Pair, services: bool = False) -> None:
    """bm1 holds the storage and the VIP (and, ``services``, has started
    them) and syncs to bm2; both daemons run."""
    a, b = pair.nodes()
    assert_ok(a.bmsync("ha", "storage", "mount"))
    assert_ok(a.bmsync("ha", "vip", "up"))  # the guard: an active node holds the VIP
    if services:
        assert_ok(a.bmsync("ha", "services", "start"))
    for node in (a, b):
        node.start()
    assert a.daemon is not None and b.daemon is not None
    a.daemon.wait_state("syncing", 30)
    b.daemon.wait_state("standby", 30)
