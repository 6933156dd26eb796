"""What is mounted where, as the kernel says it (``/proc/self/mountinfo``),
and which of those mounts hold a given block device. Pure: the text is read
by ``bmsync.fs.mounts``; the storage steps and the agent decide from this.

A device is known by its number (major, minor), not by the path that names
it: ``/dev/disk/by-uuid/...``, ``/dev/mapper/...`` and ``/dev/dm-0`` are one
device, and each node resolves the configured path on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from bmsync.core.errors import LocalFsError
from bmsync.core.storage import is_network_fstype

DeviceNumber = tuple[int, int]

# mountinfo escapes space, tab, newline and backslash as \ooo
_ESCAPED = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo."""

    mount_id: int
    parent_id: int
    device: DeviceNumber
    root: str  # the directory of the filesystem mounted (a bind mount: not '/')
    mount_point: PurePosixPath
    options: tuple[str, ...]
    fstype: str
    source: str

    @property
    def network(self) -> bool:
        return is_network_fstype(self.fstype)

    def holds(self, device: DeviceNumber) -> bool:
        return self.device == device


@dataclass(frozen=True)
class DeviceHere:
    """A device path as this node resolves it: the device's number, or why
    it cannot be used (missing, not a block device)."""

    number: DeviceNumber | None
    problem: str = ""  # when number is None


def _unescape(field: str) -> str:
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str, where: str = "/proc/self/mountinfo") -> list[Mount]:
    """Every mount, in the kernel's order (a later mount on the same point
    hides an earlier one). LocalFsError naming the line if one is not in the
    format of proc(5)."""
    mounts = []
    # lines end with "\n" only: the kernel escapes no other line break (a
    # carriage return or U+2028 in a directory name is written as is), so
    # str.splitlines() would cut such a mount point in two
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
            major, minor = fields[2].split(":")
            mounts.append(
                Mount(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    device=(int(major), int(minor)),
                    root=_unescape(fields[3]),
                    mount_point=PurePosixPath(_unescape(fields[4])),
                    options=tuple(fields[5].split(",")),
                    fstype=_unescape(fields[dash + 1]),
                    source=_unescape(fields[dash + 2]),
                )
            )
        except (ValueError, IndexError) as exc:
            raise LocalFsError(
                f"{where} line {number}: not a mount as proc(5) describes it ({line[:200]!r})"
            ) from exc
    return mounts


def visible_at(mounts: list[Mount], mount_point: PurePosixPath) -> Mount | None:
    """The mount seen at ``mount_point`` (the last one made there), if any."""
    found = [m for m in mounts if m.mount_point == mount_point]
    return found[-1] if found else None


def holding(mounts: list[Mount], device: DeviceNumber) -> list[Mount]:
    """Every mount of ``device`` (bind mounts included)."""
    return [m for m in mounts if m.holds(device)]


def under(mounts: list[Mount], mount_point: PurePosixPath) -> list[Mount]:
    """The mounts strictly below ``mount_point``: they keep it busy."""
    return [
        m
        for m in mounts
        if m.mount_point != mount_point and m.mount_point.is_relative_to(mount_point)
    ]


def containing(mounts: list[Mount], path: PurePosixPath) -> Mount | None:
    """The mount whose filesystem holds ``path`` (the deepest mount point
    at or above it; the last made there)."""
    best: Mount | None = None
    for mount in mounts:
        if path.is_relative_to(mount.mount_point) and (
            best is None or len(mount.mount_point.parts) >= len(best.mount_point.parts)
        ):
            best = mount
    return best
