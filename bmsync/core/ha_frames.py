"""The frames of the HA side of the protocol (see ``frames`` for the
sessions they travel in): where a node has the shared storage's devices
mounted, and the steps of an HA operation a node asks its peer to run.
Validated at decode, like every frame."""

from __future__ import annotations

import enum

import msgspec

from bmsync.core.roles import Role, check_epoch


class HaAction(enum.StrEnum):
    """What an HA operation may ask the peer's agent to do: this list and
    nothing else (the agent never runs a command it is sent)."""

    STATUS = "status"  # this node's facts (NodeFacts); changes nothing
    DRAIN = "drain"  # the daemon syncs everything, pauses, and the peer is verified
    RESUME = "resume"  # the daemon's pause is lifted
    SERVICES_STOP = "services-stop"
    SERVICES_START = "services-start"
    VIP_DOWN = "vip-down"
    VIP_UP = "vip-up"
    STORAGE_UNMOUNT = "storage-unmount"
    STORAGE_MOUNT = "storage-mount"
    DEMOTE = "demote"
    PROMOTE = "promote"
    # a takeover's, on the node taking over only: an agent refuses them
    FENCE_PEER = "fence-peer"
    STORAGE_MOUNT_PEER_DOWN = "storage-mount-peer-down"


# What a peer may ask of an agent: a takeover's own steps never travel.
REMOTE_ACTIONS = frozenset(HaAction) - {HaAction.FENCE_PEER, HaAction.STORAGE_MOUNT_PEER_DOWN}


class HaRequest(msgspec.Struct, frozen=True, tag="ha?"):
    """One step of an HA operation, run by the agent's node (a session of
    purpose ``ha``). ``operation``: what it is part of, for the logs."""

    action: HaAction
    operation: str = ""

    def __post_init__(self) -> None:
        if len(self.operation) > 200:
            raise ValueError("operation is longer than 200 characters")


class NodeFacts(msgspec.Struct, frozen=True):
    """A node as its HA steps see it."""

    node: str
    role: Role
    epoch: int
    stale: bool
    daemon: str  # the daemon's state, "stopped" when none answers
    paused: bool
    maintenance: bool
    vip_held: bool | None = None  # None: no ha.vip, or the check failed
    mounted: list[str] = []  # the ha.storage mount points mounted there

    def __post_init__(self) -> None:
        check_epoch(self.epoch, "NodeFacts epoch")


class HaAnswer(msgspec.Struct, frozen=True, tag="ha"):
    """What the step did (``lines``), or why it failed (``error``, with
    the exit code bmsync's CLI would have given); the node's facts after."""

    ok: bool
    lines: list[str] = []
    error: str = ""
    exit_code: int = 0
    facts: NodeFacts | None = None


# A mount request names the devices of ha.storage: a few, never thousands.
MAX_DEVICES = 64
MAX_DEVICE_PATH = 4096


class MountsRequest(msgspec.Struct, frozen=True, tag="mounts?"):
    """Does the agent's node have these block devices (absolute paths, each
    resolved there) mounted? Read-only: asked before a node mounts the
    shared storage, so that it is never mounted on both."""

    devices: list[str]

    def __post_init__(self) -> None:
        if len(self.devices) > MAX_DEVICES:
            raise ValueError(f"{len(self.devices)} devices asked; at most {MAX_DEVICES}")
        for device in self.devices:
            _check_device_path(device)


class DeviceMounts(msgspec.Struct, frozen=True):
    """``present``: the path names a block device there; ``mount_points``:
    where it is mounted there (empty: not mounted)."""

    device: str
    present: bool
    mount_points: list[str] = []
    problem: str = ""  # why not present


class MountsReport(msgspec.Struct, frozen=True, tag="mounts"):
    devices: list[DeviceMounts]

    def __post_init__(self) -> None:
        if len(self.devices) > MAX_DEVICES:
            raise ValueError(f"{len(self.devices)} devices reported; at most {MAX_DEVICES}")
        for seen in self.devices:
            _check_device_path(seen.device)
            if len(seen.mount_points) > 4 * MAX_DEVICES:
                raise ValueError(f"{seen.device}: {len(seen.mount_points)} mount points reported")


def _check_device_path(device: str) -> None:
    if not device.startswith("/") or "\0" in device or len(device) > MAX_DEVICE_PATH:
        raise ValueError(f"{device[:100]!r} is not an absolute device path")
