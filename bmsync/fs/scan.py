"""Scanning a node's tree into a manifest (the sync set only).

Both sides scan the same way: the active node to know what to send, the
agent to answer with what it has. Every file is read and hashed; a file that
changes while it is read is read again, so a manifest never pairs one
version's metadata with another version's digest.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from bmsync.core.errors import LocalFsError, TreeTooLarge
from bmsync.core.excludes import SyncSet
from bmsync.core.manifest import Entry, Kind
from bmsync.core.paths import ancestors, basename, is_within, join, parent, show
from bmsync.fs.digests import DigestCache
from bmsync.fs.files import (
    O_DIR,
    O_READ,
    entry_of,
    hash_fd,
    kind_of,
    open_dir,
    open_root,
    read_xattrs,
    same_version,
)

log = structlog.get_logger("bmsync.scan")

# A file rewritten faster than it can be read is reported, not looped on.
READ_ATTEMPTS = 3
_GONE = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP}
# The agent stages file content under this name before renaming it in place.
TMP_PREFIX = b".bmsync-tmp."


@dataclass
class Scan:
    entries: dict[bytes, Entry] = field(default_factory=dict)
    # tops absent on this node: their peer copies are left alone, never deleted
    missing_tops: list[bytes] = field(default_factory=list)
    # paths that could not be read, with the reason
    problems: list[tuple[bytes, str]] = field(default_factory=list)
    # FIFOs, sockets and device nodes: not synced, and left alone on the peer
    unsupported: list[bytes] = field(default_factory=list)
    # temporary files a killed agent left behind (never part of a manifest)
    leftovers: list[bytes] = field(default_factory=list)
    # regular files with more than one name: (device, inode) -> names found
    links: dict[tuple[int, int], list[bytes]] = field(default_factory=dict)
    # where unchanged files' digests come from (an input, not a result)
    digests: DigestCache | None = None
    # the most entries kept before the scan stops, and the root named when
    # it does (inputs, not results)
    max_entries: int | None = None
    root: Path | None = None

    def keep(self, path: bytes, entry: Entry) -> None:
        if self.max_entries is not None and len(self.entries) >= self.max_entries:
            raise TreeTooLarge(
                f"the sync set under {self.root} holds more than {self.max_entries:,} "
                f"entries (files, directories, symlinks; stopped at {show(path)}): a scan "
                "stops there instead of growing its memory. If the tree is meant to be this "
                "large, raise sync.max_entries in the configuration of both nodes; if "
                "not, find what filled it"
            )
        self.entries[path] = entry


def scan_tree(
    root: Path,
    syncset: SyncSet,
    digests: DigestCache | None = None,
    max_entries: int | None = None,
) -> Scan:
    """The whole sync set. With ``digests``, unchanged files are not read,
    and the cache is saved for the next scan. Past ``max_entries``,
    TreeTooLarge."""
    try:
        root_fd = open_root(root)
    except OSError as exc:
        raise LocalFsError(f"cannot open sync root {root}: {exc.strerror}") from exc
    result = Scan(digests=digests, max_entries=max_entries, root=root)
    try:
        for top in syncset.tops:
            _scan_top(root_fd, top, syncset, result)
    finally:
        os.close(root_fd)
    if digests is not None:
        try:
            digests.save()
        except OSError as exc:
            log.warning("digest_cache_not_saved", error=str(exc))
    return result


def _scan_top(root_fd: int, top: bytes, syncset: SyncSet, result: Scan) -> None:
    if not top:
        _scan_children(root_fd, b"", syncset, result)
        return
    try:
        dir_fd = open_dir(root_fd, parent(top))
    except OSError as exc:
        if exc.errno in _GONE:
            result.missing_tops.append(top)
            return
        result.problems.append((top, exc.strerror or str(exc)))
        return
    try:
        st = os.stat(basename(top), dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        os.close(dir_fd)
        if exc.errno in _GONE:
            result.missing_tops.append(top)
        else:
            result.problems.append((top, exc.strerror or str(exc)))
        return
    try:
        kind = kind_of(st.st_mode)
        if kind is not None and syncset.covers(top, kind == Kind.DIR):
            _scan_one(dir_fd, top, st, kind, syncset, result)
    finally:
        os.close(dir_fd)


def _scan_children(dir_fd: int, path: bytes, syncset: SyncSet, result: Scan) -> None:
    with os.scandir(dir_fd) as it:
        names = sorted(os.fsencode(e.name) for e in it)
    for name in names:
        child = join(path, name)
        if name.startswith(TMP_PREFIX):
            result.leftovers.append(child)
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        kind = kind_of(st.st_mode)
        if kind is None:
            if not syncset.excluded(child, False):
                result.unsupported.append(child)
            continue
        if syncset.excluded(child, kind == Kind.DIR):
            continue
        _scan_one(dir_fd, child, st, kind, syncset, result)


def _scan_one(
    dir_fd: int,
    path: bytes,
    st: os.stat_result,
    kind: Kind,
    syncset: SyncSet,
    result: Scan,
    recurse: bool = True,
) -> None:
    name = basename(path)
    try:
        if kind == Kind.SYMLINK:
            target = os.readlink(name, dir_fd=dir_fd)
            result.keep(path, entry_of(st, kind, target=target))
        elif kind == Kind.FILE:
            if st.st_nlink > 1:
                result.links.setdefault((st.st_dev, st.st_ino), []).append(path)
            cached = result.digests.lookup(path, st) if result.digests is not None else None
            if cached is not None:
                result.keep(path, cached)
                return
            read = read_file(dir_fd, name)
            if read is None:
                result.problems.append((path, "kept changing while being read"))
                return
            entry, seen = read
            result.keep(path, entry)
            if result.digests is not None:
                result.digests.store(path, seen, entry)
        else:
            child_fd = os.open(name, O_DIR, dir_fd=dir_fd)
            try:
                result.keep(path, entry_of(os.fstat(child_fd), kind, xattrs=read_xattrs(child_fd)))
                if recurse:
                    _scan_children(child_fd, path, syncset, result)
            finally:
                os.close(child_fd)
    except OSError as exc:
        if exc.errno not in _GONE:
            result.problems.append((path, exc.strerror or str(exc)))


def scan_paths(root_fd: int, syncset: SyncSet, changed: Mapping[bytes, bool]) -> Scan:
    """This node's side of a batch: each changed path (its subtree too where
    ``changed[path]`` is true) and the directories above it, inside its sync
    path. A path that is gone or excluded here is simply absent."""
    result = Scan()
    seen_dirs: set[bytes] = set()
    for path, deep in changed.items():
        top = syncset.top_of(path)
        if top is None:
            continue
        wanted = [(a, False) for a in ancestors(path) if is_within(a, top) and a not in seen_dirs]
        seen_dirs.update(a for a, _ in wanted)
        for target, recurse in [*reversed(wanted), (path, deep)]:
            _scan_path(root_fd, target, syncset, result, recurse)
    return result


def _scan_path(root_fd: int, path: bytes, syncset: SyncSet, result: Scan, recurse: bool) -> None:
    try:
        dir_fd = open_dir(root_fd, parent(path))
    except OSError as exc:
        if exc.errno not in _GONE:
            result.problems.append((path, exc.strerror or str(exc)))
        return
    try:
        st = os.stat(basename(path), dir_fd=dir_fd, follow_symlinks=False)
        kind = kind_of(st.st_mode)
        if kind is None:
            result.unsupported.append(path)
        elif syncset.covers(path, kind == Kind.DIR):
            _scan_one(dir_fd, path, st, kind, syncset, result, recurse)
    except OSError as exc:
        if exc.errno not in _GONE:
            result.problems.append((path, exc.strerror or str(exc)))
    finally:
        os.close(dir_fd)


def read_file_entry(dir_fd: int, name: bytes) -> Entry | None:
    """Hash a regular file; ``None`` if it changed during every attempt.

    Raises OSError if it vanished or is no longer a regular file.
    """
    read = read_file(dir_fd, name)
    return None if read is None else read[0]


def read_file(dir_fd: int, name: bytes) -> tuple[Entry, os.stat_result] | None:
    """``read_file_entry``, with the stat of the version that was read."""
    for _ in range(READ_ATTEMPTS):
        fd = os.open(name, O_READ, dir_fd=dir_fd)
        try:
            before = os.fstat(fd)
            if kind_of(before.st_mode) != Kind.FILE:
                raise OSError(errno.ENOENT, "replaced by a non-file")
            xattrs = read_xattrs(fd)
            digest, _ = hash_fd(fd)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if same_version(before, after):
            return entry_of(after, Kind.FILE, digest=digest, xattrs=xattrs), after
    return None
