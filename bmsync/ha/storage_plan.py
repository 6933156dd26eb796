"""What ``bmsync ha storage mount`` and ``unmount`` do, decided before
anything runs: from the configured entries, what this node has mounted,
which device each configured path names here, and what the peer reported.

No I/O here: ``bmsync.ha.storage`` runs the steps. A plan either holds
every step or refuses as a whole: nothing is mounted when one entry cannot
be (its device is missing, the peer holds it, its mount point holds
something else), and nothing is unmounted when one mount point has a mount
under it that bmsync does not manage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

from bmsync.config.model import StorageConfig
from bmsync.core.mounts import DeviceHere, DeviceNumber, Mount, holding, under, visible_at

Argv = list[str]


@dataclass(frozen=True)
class PeerMounts:
    """The peer's answer: for each device path asked, where it has it
    mounted (absent: not mounted there), and the paths it does not have."""

    node: str
    mounted: dict[str, tuple[str, ...]] = field(default_factory=dict)
    absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class PeerUnknown:
    """The peer could not be asked (no ``peer:`` section, unreachable,
    refused): why."""

    reason: str


PeerReport = PeerMounts | PeerUnknown


@dataclass(frozen=True)
class AlreadyMounted:
    entry: StorageConfig


@dataclass(frozen=True)
class ToMount:
    entry: StorageConfig
    fsck: Argv | None
    mount: Argv


@dataclass(frozen=True)
class Refused:
    entry: StorageConfig
    reason: str


MountStep = AlreadyMounted | ToMount


@dataclass(frozen=True)
class MountPlan:
    steps: list[MountStep]
    refused: list[Refused]
    # the peer could not be asked and the operator said it is down
    peer_assumed_down: str = ""


def fsck_argv(entry: StorageConfig) -> Argv:
    """The check run before mounting: preen mode (fix what is safe to fix
    unattended, stop on anything else); xfs_repair in no-modify mode."""
    device = str(entry.device)
    if entry.fstype in ("ext2", "ext3", "ext4"):
        return ["e2fsck", "-p", device]
    if entry.fstype == "xfs":
        return ["xfs_repair", "-n", device]
    return ["fsck", "-t", entry.fstype, "-a", device]


def fsck_verdict(entry: StorageConfig, status: int | None, output: str) -> str | None:
    """None if the filesystem may be mounted after this check; else what
    to do. fsck's statuses (e2fsck(8)): 0 clean, 1 errors fixed, 2 fixed
    and a reboot advised (for the root filesystem only); 4 and above: left
    uncorrected or the check failed. xfs_repair -n: 0 clean, else damage
    found, except a dirty log, which the mount replays."""
    device, fstype = entry.device, entry.fstype
    if fstype == "xfs":
        if status == 0 or "metadata changes in a log" in output:
            return None
        return (
            f"xfs_repair found damage: unmounted on both nodes, run 'xfs_repair {device}' "
            "by hand, then mount again"
        )
    if status in (0, 1, 2):
        return None
    if status is not None and status & 8:
        return (
            f"the check of {device} could not run (see its output: a wrong fstype, or the "
            "device in use on this node or the peer?)"
        )
    return (
        "errors the automatic check must not fix: unmounted on both nodes, run "
        f"'fsck -t {fstype} -f {device}' by hand (it asks before each repair), "
        "then mount again"
    )


def mount_argv(entry: StorageConfig) -> Argv:
    options = ["-o", ",".join(entry.options)] if entry.options else []
    return ["mount", "-t", entry.fstype, *options, str(entry.device), str(entry.mount)]


def umount_argv(mount_point: PurePosixPath) -> Argv:
    """Never lazy (-l), never forced (-f): a busy mount is an error, so
    that nothing is still writing when the peer mounts it."""
    return ["umount", str(mount_point)]


def holders_argv(mount_point: PurePosixPath) -> Argv:
    """The processes using any file of the filesystem at ``mount_point``
    (their pids on stdout)."""
    return ["fuser", "-m", str(mount_point)]


def plan_mount(
    entries: tuple[StorageConfig, ...],
    devices: dict[str, DeviceHere],
    here: list[Mount],
    peer: PeerReport,
    peer_is_down: bool,
) -> MountPlan:
    """The steps of ``storage mount``, in the configured order, and every
    reason not to take them. ``devices``: each entry's device path as
    resolved here; ``here``: this node's mounts."""
    steps: list[MountStep] = []
    refused: list[Refused] = []
    assumed_down = ""
    for entry in entries:
        verdict = _judge_mount(entry, devices[str(entry.device)], here)
        if isinstance(verdict, Refused):
            refused.append(verdict)
            continue
        if not entry.shared:
            if isinstance(peer, PeerUnknown):
                if not peer_is_down:
                    refused.append(Refused(entry, _peer_unknown(entry, peer)))
                    continue
                assumed_down = peer.reason
            elif str(entry.device) in peer.mounted:
                refused.append(Refused(entry, _peer_holds(entry, peer, verdict)))
                continue
        steps.append(verdict)
    return MountPlan(steps, refused, assumed_down)


def _judge_mount(
    entry: StorageConfig, device: DeviceHere, here: list[Mount]
) -> AlreadyMounted | ToMount | Refused:
    if device.number is None:
        return Refused(entry, f"{entry.device}: {device.problem}")
    mount_point = PurePosixPath(entry.mount)
    seen = visible_at(here, mount_point)
    if seen is not None and seen.holds(device.number):
        return AlreadyMounted(entry)
    if seen is not None:
        return Refused(
            entry,
            f"{entry.mount} already holds {seen.source} ({seen.fstype}), not {entry.device}: "
            f"unmount it ('umount {entry.mount}') or correct ha.storage",
        )
    elsewhere = holding(here, device.number)
    if elsewhere and not entry.shared:
        where = ", ".join(str(m.mount_point) for m in elsewhere)
        return Refused(
            entry,
            f"{entry.device} is already mounted here on {where}: unmount it there first "
            f"('umount {elsewhere[0].mount_point}')",
        )
    return ToMount(entry, fsck_argv(entry) if entry.fsck else None, mount_argv(entry))


def _peer_unknown(entry: StorageConfig, peer: PeerUnknown) -> str:
    return (
        f"{entry.device}: cannot ask the peer whether it has it mounted ({peer.reason}). "
        "Mounting it on both nodes corrupts it: mount it only once the peer is powered off "
        "or fenced ('bmsync ha fence'), then add --peer-is-down"
    )


def _peer_holds(entry: StorageConfig, peer: PeerMounts, here: AlreadyMounted | ToMount) -> str:
    where = ", ".join(peer.mounted[str(entry.device)])
    both = " and here too: a split-brain, act now" if isinstance(here, AlreadyMounted) else ""
    return (
        f"{entry.device} is mounted on the peer {peer.node} ({where}){both}. Unmount it "
        f"there first ('bmsync ha storage unmount' on {peer.node}), or fence {peer.node} "
        "('bmsync ha fence'); --peer-is-down does not apply to a peer that answers"
    )


@dataclass(frozen=True)
class Unmount:
    """Unmount ``mount_point``, which holds ``entry``'s device."""

    entry: StorageConfig
    mount_point: PurePosixPath


@dataclass(frozen=True)
class UnmountPlan:
    steps: list[Unmount]
    not_mounted: list[StorageConfig]
    refused: list[Refused]


def plan_unmount(
    entries: tuple[StorageConfig, ...],
    devices: dict[str, DeviceHere],
    here: list[Mount],
) -> UnmountPlan:
    """The steps of ``storage unmount``: in reverse configured order, every
    mount of each entry's device here (the deepest first), and the entry's
    mount point itself when its device is no longer present (a storage that
    went away). A mount under one of them that is not being unmounted
    refuses the plan: the kernel would report the mount busy; so does
    another device mounted over one of them: umount would remove it."""
    steps: list[Unmount] = []
    not_mounted: list[StorageConfig] = []
    refused: list[Refused] = []
    for entry in reversed(entries):
        mount_point = PurePosixPath(entry.mount)
        number = devices[str(entry.device)].number
        if number is not None:
            points = [m.mount_point for m in holding(here, number)]
            for over in _mounted_over(here, points, number):
                refused.append(
                    Refused(
                        entry,
                        f"{over.mount_point}: {over.source} ({over.fstype}) is mounted over "
                        f"{entry.device}; unmount it first ('umount {over.mount_point}')",
                    )
                )
        else:
            seen = visible_at(here, mount_point)
            points = [mount_point] if seen is not None and seen.fstype == entry.fstype else []
        # a device mounted twice on one point is unmounted twice (stable sort)
        points = sorted(points, key=lambda p: len(p.parts), reverse=True)
        if not points:
            not_mounted.append(entry)
        steps += [Unmount(entry, point) for point in points]
    going = {step.mount_point for step in steps}
    for step in dict.fromkeys(steps):  # a point unmounted twice is judged once
        others = [
            m.mount_point for m in under(here, step.mount_point) if m.mount_point not in going
        ]
        if others:
            names = ", ".join(str(p) for p in others)
            refused.append(
                Refused(
                    step.entry,
                    f"{step.mount_point} has mount(s) under it that ha.storage does not list: "
                    f"{names}; unmount them first (or list them in ha.storage, after "
                    f"{step.entry.mount})",
                )
            )
    return UnmountPlan(steps, not_mounted, refused)


def _mounted_over(
    here: list[Mount], points: list[PurePosixPath], number: DeviceNumber
) -> list[Mount]:
    """The mounts of other devices made on one of ``points`` after the
    device: ``umount`` there would remove them instead of the device."""
    over = []
    for point in dict.fromkeys(points):
        at_point = [m for m in here if m.mount_point == point]
        first = next(i for i, m in enumerate(at_point) if m.holds(number))
        over += [m for m in at_point[first + 1 :] if not m.holds(number)]
    return over
