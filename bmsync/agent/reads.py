"""What a sender may read here: this node's manifest, a file's content,
and whether the shared storage's devices are mounted here.

Both are read-only and may be of any size, so both are answered as
iterators, sent a part (or a chunk) at a time and never under the role
lock: only the scan itself is held, never a copy of it in frames. Only
paths of this node's sync set are ever read for a sender.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import structlog

from bmsync.core.frames import Frame, ManifestPart, ManifestRequest, PutAbort
from bmsync.core.ha_frames import DeviceMounts, MountsReport, MountsRequest
from bmsync.core.manifest import Entry, manifest_digest
from bmsync.core.mounts import holding
from bmsync.core.paths import basename, parent, show
from bmsync.fs.confine import Confined, OpFailed, reason
from bmsync.fs.digests import DigestCache
from bmsync.fs.mounts import MOUNTINFO, device_here, read_mounts
from bmsync.fs.scan import scan_tree
from bmsync.fs.tempfiles import remove_temp
from bmsync.link.outbox import file_frames

log = structlog.get_logger("bmsync.agent")

# Entries per ManifestPart: keeps each frame far below MAX_FRAME_BYTES even
# with large xattrs (the frame encoder still checks).
MANIFEST_PART_BYTES = 1024 * 1024


def manifest(
    request: ManifestRequest,
    where: Confined,
    digests: DigestCache,
    max_entries: int,
    writing: bool,
) -> list[Frame] | Iterator[Frame]:
    """This node's manifest (``unchanged`` if it has the digest the sender
    expects). ``writing``: this session holds the one-sender lock, so the
    temporary files found are a killed writer's, and are removed."""
    scan = scan_tree(
        where.root,
        where.syncset,
        None if request.fresh else digests,
        max_entries=max_entries,
    )
    for path, problem in scan.problems:
        log.warning("scan_problem", path=show(path), reason=problem)
    if writing:
        _remove_leftovers(where, scan.leftovers)
    if request.expect and manifest_digest(scan.entries) == request.expect:
        return [ManifestPart([], last=True, unchanged=True)]
    return _manifest_parts(scan.entries)


def mounts(request: MountsRequest, mountinfo: Path = MOUNTINFO) -> list[Frame]:
    """Where each device asked is mounted on this node. Each path is
    resolved here: the same disk may have another name on each node."""
    here = read_mounts(mountinfo)
    seen = []
    for device in request.devices:
        found = device_here(device)
        if found.number is None:
            seen.append(DeviceMounts(device, present=False, problem=found.problem))
            continue
        points = [str(m.mount_point) for m in holding(here, found.number)]
        seen.append(DeviceMounts(device, present=True, mount_points=points))
    log.info(
        "mounts_asked", devices=request.devices, mounted=[s.device for s in seen if s.mount_points]
    )
    return [MountsReport(seen)]


def _remove_leftovers(where: Confined, leftovers: list[bytes]) -> None:
    """Temporary files a killed agent left; one that cannot be removed
    (a read-only filesystem) is logged and left for a later session."""
    for path in leftovers:
        try:
            dir_fd = where.open_dir(parent(path))
        except OSError:
            continue
        try:
            removed = remove_temp(dir_fd, basename(path), path)
        finally:
            os.close(dir_fd)
        if removed:
            log.info("leftover_removed", path=show(path))


def _manifest_parts(entries: dict[bytes, Entry]) -> Iterator[ManifestPart]:
    """The manifest a part at a time: each is encoded and sent before the
    next is made, so only the scan itself is held, never a copy in frames."""
    chunk: list[tuple[bytes, Entry]] = []
    size = 0
    for path, entry in entries.items():
        chunk.append((path, entry))
        size += len(path) + len(entry.target) + 64 + sum(len(k) + len(v) for k, v in entry.xattrs)
        if size >= MANIFEST_PART_BYTES:
            yield ManifestPart(chunk, last=False)
            chunk, size = [], 0
    yield ManifestPart(chunk, last=True)


def fetch(where: Confined, path: bytes) -> Iterator[Frame]:
    """Send a file back (``bmsync resume --discard`` restores from here),
    a chunk at a time: ``PutChunk``* then ``Put``, or ``PutAbort`` (also
    after some chunks, if it cannot be read to its end)."""
    try:
        where.check_covered(path, False)
        yield from file_frames(where.root_fd, path)
    except (OpFailed, OSError) as exc:
        log.warning("fetch_failed", path=show(path), reason=reason(exc))
        yield PutAbort(path)
