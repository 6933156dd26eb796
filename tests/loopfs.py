"""A real, small ext4 filesystem for tests: an image file on a loop device,
mounted where the test says, that can be remounted read-only and back.

Everything is undone by what was created: the mount point is unmounted,
the loop device this helper attached is detached, the image removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def _attach(image: Path) -> str:
    """A free loop device holding ``image``: its path."""
    return subprocess.run(
        ["losetup", "--find", "--show", str(image)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()


def needs_loop_devices() -> pytest.MarkDecorator:
    missing = [t for t in ("losetup", "mkfs.ext4", "mount", "umount") if not shutil.which(t)]
    reason = "needs root" if os.geteuid() != 0 else f"needs {', '.join(missing)}"
    return pytest.mark.skipif(os.geteuid() != 0 or bool(missing), reason=reason)


class LoopFs:
    def __init__(self, image: Path, device: str, mountpoint: Path) -> None:
        self.image = image
        self.device = device
        self.mountpoint = mountpoint

    def read_only(self) -> None:
        _run("mount", "-o", "remount,ro", str(self.mountpoint))

    def read_write(self) -> None:
        _run("mount", "-o", "remount,rw", str(self.mountpoint))


@contextmanager
def loop_ext4(image: Path, mountpoint: Path, size_kib: int = 4096) -> Iterator[LoopFs]:
    """An empty ext4 filesystem of ``size_kib`` mounted on ``mountpoint``
    (which must exist); ``lost+found`` is removed so the tree holds only
    what the test puts there."""
    with open(image, "wb") as f:
        f.truncate(size_kib * 1024)
    # -m 0: no blocks reserved for root (the tests run as root and fill it)
    _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
    device = _attach(image)
    try:
        _run("mount", "-t", "ext4", device, str(mountpoint))
        try:
            (mountpoint / "lost+found").rmdir()
            yield LoopFs(image, device, mountpoint)
        finally:
            _unmount(mountpoint)
    finally:
        # busy (a descriptor still open): the kernel detaches it once released
        _run("losetup", "-d", device)
        image.unlink()


def _unmount(mountpoint: Path) -> None:
    """Unmount; if something still holds the filesystem, detach it from the
    tree anyway (lazily, so nothing leaks) and say so."""
    try:
        _run("umount", str(mountpoint))
    except subprocess.CalledProcessError as exc:
        _run("umount", "--lazy", str(mountpoint))
        raise AssertionError(
            f"{mountpoint} was busy at the end of the test (a descriptor left open): "
            f"{exc.stderr!r}; unmounted lazily"
        ) from exc


# mkfs.xfs refuses a filesystem smaller than this (xfsprogs 5.19 and later)
XFS_MIN_MIB = 300


@contextmanager
def loop_device(image: Path, fstype: str, size_mib: int = 16) -> Iterator[str]:
    """A loop device holding a new, empty ``fstype`` filesystem (ext4 or
    xfs; a sparse image), not mounted. At the end, whatever still has it
    mounted in this mount namespace is unmounted (an assertion error if
    that needs a lazy unmount), then it is detached and the image removed."""
    size = max(size_mib, XFS_MIN_MIB) if fstype == "xfs" else size_mib
    with open(image, "wb") as f:
        f.truncate(size * 1024 * 1024)
    mkfs = ["mkfs.xfs", "-q", "-f"] if fstype == "xfs" else [f"mkfs.{fstype}", "-q", "-F"]
    _run(*mkfs, str(image))
    device = _attach(image)
    try:
        yield device
    finally:
        try:
            for point in _mount_points_of(device):
                _unmount(point)
        finally:
            _run("losetup", "-d", device)
            image.unlink()


def _mount_points_of(device: str) -> list[Path]:
    """Where ``device`` is mounted here, the deepest first."""
    number = os.stat(device).st_rdev
    wanted = f"{os.major(number)}:{os.minor(number)}"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if fields[2] == wanted:
            points.append(Path(fields[4].replace("\\040", " ")))
    return sorted(points, key=lambda p: len(p.parts), reverse=True)


def needs_storage_tools() -> pytest.MarkDecorator:
    """What the shared-storage tests run: loop devices, both filesystems,
    fuser, and unshare/nsenter for a peer with a mount table of its own."""
    tools = ("losetup", "mkfs.ext4", "mkfs.xfs", "xfs_repair", "fuser", "unshare", "nsenter")
    missing = [t for t in tools if not shutil.which(t)]
    reason = "needs root" if os.geteuid() != 0 else f"needs {', '.join(missing)}"
    return pytest.mark.skipif(os.geteuid() != 0 or bool(missing), reason=reason)
