"""``bmsync ha status``: the HA resources as this node sees them: the VIP
(held here, other MACs answering for it), both nodes' roles and epochs,
the last HA operation and its steps, each mount of ``ha.storage``
(mounted here, which filesystem, on a network filesystem or not), where
cyrus's data lives, the peer's power state read from its BMC, and the
services' check commands.

``problems`` judges the report (pure): what an administrator must look at
now. A passive node with nothing mounted and its services stopped has
none; a node holding the VIP while another MAC answers for it, a mount
point holding another device, cyrus on a network filesystem, a BMC that
cannot be read, or failing services on the node holding the resources do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from bmsync.config.model import Config, StorageConfig
from bmsync.core.errors import BmsyncError
from bmsync.core.mounts import DeviceHere, Mount, containing, visible_at
from bmsync.core.observations import VipCheckFailed, VipSeen
from bmsync.core.storage import CYRUS_PATHS
from bmsync.fs.mounts import device_here, read_mounts
from bmsync.ha.fence import fence
from bmsync.ha.fencing import Outcome
from bmsync.ha.operation import last_operation
from bmsync.ha.peer_link import peer_welcome
from bmsync.ha.services import Ran, run_commands
from bmsync.ha.vip import observe_vip
from bmsync.state.roles import RoleStore


@dataclass(frozen=True)
class MountState:
    mount: str
    device: str
    mounted_here: bool  # the configured device is mounted on the mount point
    present: bool  # the device exists here
    holds: str = ""  # what is mounted on the mount point (its source), if anything
    fstype: str = ""  # of what is mounted there
    network: bool = False  # a network or FUSE filesystem
    shared: bool = False  # a cluster filesystem, mounted on both nodes


@dataclass(frozen=True)
class PlaceState:
    """The filesystem holding one of cyrus's directories."""

    path: str
    mount_point: str
    fstype: str
    network: bool


@dataclass
class HaReport:
    node: str
    role: dict[str, Any] = field(default_factory=dict)  # this node's role and epoch
    peer: dict[str, Any] | None = None  # the peer's, from its agent (None: no peer section)
    last_operation: dict[str, Any] | None = None  # state_dir/last-operation.json
    vip: dict[str, Any] | None = None
    storage: list[MountState] = field(default_factory=list)
    cyrus: list[PlaceState] = field(default_factory=list)
    peer_power: dict[str, Any] | None = None
    services: list[dict[str, Any]] | None = None
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def storage_states(
    entries: tuple[StorageConfig, ...], mounts: list[Mount], devices: dict[str, DeviceHere]
) -> list[MountState]:
    states = []
    for entry in entries:
        device = devices[str(entry.device)]
        seen = visible_at(mounts, PurePosixPath(entry.mount))
        states.append(
            MountState(
                mount=str(entry.mount),
                device=str(entry.device),
                mounted_here=seen is not None
                and device.number is not None
                and seen.holds(device.number),
                present=device.number is not None,
                holds="" if seen is None else seen.source,
                fstype="" if seen is None else seen.fstype,
                network=seen is not None and seen.network,
                shared=entry.shared,
            )
        )
    return states


def cyrus_places(mounts: list[Mount]) -> list[PlaceState]:
    places = []
    for path in CYRUS_PATHS:
        mount = containing(mounts, path)
        if mount is not None:
            places.append(
                PlaceState(str(path), str(mount.mount_point), mount.fstype, mount.network)
            )
    return places


def problems(report: HaReport) -> list[str]:
    """What needs an administrator's eyes, each with what to do."""
    found = []
    peer = report.peer or {}
    if report.role.get("role") == "active" and peer.get("role") == "active":
        found.append(
            f"both {report.node} and {peer['node']} are active: 'bmsync status' on each "
            "says which one to demote"
        )
    if (report.last_operation or {}).get("result", "done") not in ("done", "running"):
        last = report.last_operation or {}
        found.append(
            f"the last operation ({last.get('operation')}) {last.get('result')}: see its steps "
            "below, and the README's 'Switchover' for how to leave that state"
        )
    vip = report.vip or {}
    if "error" in vip:
        found.append(f"VIP check failed: {vip['error']}")
    elif vip.get("held") and vip.get("other_macs"):
        found.append(
            f"VIP {vip['address']} is held here and also answers from "
            f"{', '.join(vip['other_macs'])}: two nodes hold it; release it on one "
            "('bmsync ha vip down')"
        )
    for state in report.storage:
        if state.holds and not state.mounted_here:
            found.append(
                f"{state.mount} holds {state.holds}, not {state.device}: "
                "unmount it or correct ha.storage"
            )
    # a cluster filesystem (shared) is mounted on both nodes: not a sign of
    # which node holds the resources
    exclusive = [s for s in report.storage if not s.shared]
    mounted = [s.mount for s in exclusive if s.mounted_here]
    if mounted and len(mounted) < len(exclusive):
        missing = [s.mount for s in exclusive if not s.mounted_here]
        found.append(
            f"storage half mounted: {', '.join(mounted)} mounted, {', '.join(missing)} not; "
            "run 'bmsync ha storage mount' (or unmount) to finish"
        )
    for place in report.cyrus:
        if place.network:
            found.append(
                f"{place.path} is on {place.fstype} ({place.mount_point}): cyrus needs "
                "block storage, never a network filesystem"
            )
    power = report.peer_power
    if power is not None and not power["read"]:
        found.append(f"the peer's BMC cannot be read: {power['message']}; fencing would fail")
    holds_resources = bool(mounted) or bool(vip.get("held"))
    if report.services is not None and holds_resources:
        failed = [s["command"] for s in report.services if not s["ok"]]
        if failed:
            found.append(
                f"this node holds the resources but services check failed: {', '.join(failed)}"
            )
    return found


def vip_state(address: str, interface: str, seen: VipSeen | VipCheckFailed) -> dict[str, Any]:
    if isinstance(seen, VipCheckFailed):
        return {"address": address, "interface": interface, "error": seen.reason}
    return {
        "address": address,
        "interface": interface,
        "held": seen.held,
        "other_macs": list(seen.other_macs),
    }


def power_state(outcome: Outcome) -> dict[str, Any]:
    return {"read": outcome.ok, "power": outcome.power.value, "message": outcome.message}


def service_states(ran: list[Ran]) -> list[dict[str, Any]]:
    return [
        {"command": r.command, "ok": r.ok, "status": r.status, "output": r.output[-400:]}
        for r in ran
    ]


@dataclass(frozen=True)
class StatusTools:
    """What ``collect`` reads, injected so tests can drive it."""

    mounts: Callable[[], list[Mount]] = read_mounts
    device: Callable[[str], DeviceHere] = device_here
    fence_test: Callable[[Config], Outcome] = lambda conf: _fence_test(conf)
    services_check: Callable[[Config], list[Ran]] = lambda conf: _services_check(conf)
    peer_role: Callable[[Config], dict[str, Any]] = lambda conf: asyncio.run(_peer_role(conf))


async def _peer_role(conf: Config) -> dict[str, Any]:
    """The peer's role and epoch, as its agent says at a read-only
    handshake; or why it could not be asked."""
    peer = conf.require_peer()
    welcome = await peer_welcome(conf)
    if isinstance(welcome, str):
        where = f"{peer.user}@{peer.host}:{peer.port}"
        return {"node": where, "reachable": False, "error": welcome}
    return {
        "node": welcome.node,
        "reachable": True,
        "role": str(welcome.role),
        "epoch": welcome.epoch,
    }


def _fence_test(conf: Config) -> Outcome:
    assert conf.ha.fencing is not None
    return fence(conf.ha.fencing, test=True)


def _services_check(conf: Config) -> list[Ran]:
    assert conf.ha.services is not None
    return run_commands(conf.ha.services, "check")


def collect(conf: Config, tools: StatusTools | None = None) -> HaReport:
    """Look at every configured HA resource from this node; the report,
    with its problems."""
    tools = tools or StatusTools()
    ha = conf.ha
    report = HaReport(conf.node)
    role = RoleStore(conf.state_dir, conf.node).load_record(lenient=True)[0]
    report.role = {
        "role": str(role.role),
        "epoch": role.epoch,
        "highest_seen": str(role.highest_seen),
        "stale": role.is_stale(),
    }
    if conf.peer is not None:
        report.peer = tools.peer_role(conf)
    report.last_operation = last_operation(conf.state_dir)
    if ha.vip is not None:
        seen = asyncio.run(observe_vip(ha.vip))
        report.vip = vip_state(ha.vip.address, ha.vip.interface, seen)
    mounts = tools.mounts()
    devices = {str(e.device): tools.device(str(e.device)) for e in ha.storage}
    report.storage = storage_states(ha.storage, mounts, devices)
    report.cyrus = cyrus_places(mounts)
    if ha.fencing is not None:
        try:
            report.peer_power = power_state(tools.fence_test(conf))
        except BmsyncError as exc:
            report.peer_power = {"read": False, "power": "unknown", "message": str(exc)}
    if ha.services is not None and ha.services.check:
        report.services = service_states(tools.services_check(conf))
    report.problems = problems(report)
    return report
