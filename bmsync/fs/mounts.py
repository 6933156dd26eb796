"""This node's mounts and block devices, read from the kernel."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bmsync.core.errors import LocalFsError
from bmsync.core.mounts import DeviceHere, Mount, parse_mountinfo

MOUNTINFO = Path("/proc/self/mountinfo")


def read_mounts(mountinfo: Path = MOUNTINFO) -> list[Mount]:
    try:
        text = os.fsdecode(mountinfo.read_bytes())
    except OSError as exc:
        raise LocalFsError(f"cannot read {mountinfo}: {exc.strerror}") from exc
    return parse_mountinfo(text, str(mountinfo))


def device_here(path: str | Path) -> DeviceHere:
    """The block device ``path`` names here (symlinks followed, as
    ``/dev/disk/by-uuid/...`` are)."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return DeviceHere(
            None, "no such device on this node: is the storage attached here (lsblk)?"
        )
    except OSError as exc:
        return DeviceHere(None, f"cannot read it: {exc.strerror}")
    if not stat.S_ISBLK(found.st_mode):
        return DeviceHere(None, "not a block device")
    return DeviceHere((os.major(found.st_rdev), os.minor(found.st_rdev)))
