"""Filesystem access that never follows a symlink it did not expect.

Every path below a node's root is reached from an open directory descriptor,
one component at a time, with ``O_NOFOLLOW``: a symlink planted in a parent
directory stops the walk with ``ELOOP``/``ENOTDIR`` instead of leading
outside the root. Both the scanner and the agent use these helpers.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

from bmsync.core.manifest import Entry, Kind, new_hasher
from bmsync.core.paths import basename, parent

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
READ_BYTES = 1024 * 1024
# Filesystems without xattr support answer with one of these.
NO_XATTRS = {errno.ENOTSUP, errno.EOPNOTSUPP}


def open_root(root: Path) -> int:
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_dir(base_fd: int, rel: bytes) -> int:
    """Open directory ``rel`` below ``base_fd`` without following symlinks."""
    fd = os.dup(base_fd)
    try:
        for part in rel.split(b"/") if rel else ():
            child = os.open(part, O_DIR, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def kind_of(mode: int) -> Kind | None:
    if stat.S_ISREG(mode):
        return Kind.FILE
    if stat.S_ISDIR(mode):
        return Kind.DIR
    if stat.S_ISLNK(mode):
        return Kind.SYMLINK
    return None


def read_xattrs(fd: int) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in NO_XATTRS:
            return ()
        raise
    pairs = []
    for name in names:
        try:
            pairs.append((name.encode("utf-8", "surrogateescape"), os.getxattr(fd, name)))
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # removed meanwhile
                raise
    return tuple(sorted(pairs))


def write_xattrs(fd: int, wanted: tuple[tuple[bytes, bytes], ...]) -> None:
    """Make ``fd``'s extended attributes exactly ``wanted``."""
    if not wanted and read_xattrs(fd) == ():
        return
    have = dict(read_xattrs(fd))
    want = dict(wanted)
    for name in have.keys() - want.keys():
        os.removexattr(fd, os.fsdecode(name))
    for name, value in want.items():
        if have.get(name) != value:
            os.setxattr(fd, os.fsdecode(name), value)


def hash_fd(fd: int) -> tuple[bytes, int]:
    """The xxh3-128 digest and length of what ``fd`` holds from its offset."""
    hasher = new_hasher()
    size = 0
    while chunk := os.read(fd, READ_BYTES):
        hasher.update(chunk)
        size += len(chunk)
    return hasher.digest(), size


def entry_of(
    st: os.stat_result,
    kind: Kind,
    digest: bytes = b"",
    target: bytes = b"",
    xattrs: tuple[tuple[bytes, bytes], ...] = (),
) -> Entry:
    return Entry(
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        size=st.st_size if kind == Kind.FILE else 0,
        digest=digest,
        target=target,
        xattrs=xattrs if kind != Kind.SYMLINK else (),
    )


def same_version(a: os.stat_result, b: os.stat_result) -> bool:
    """Whether two stats show the same inode, unmodified in between."""
    return (a.st_ino, a.st_dev, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (
        b.st_ino,
        b.st_dev,
        b.st_size,
        b.st_mtime_ns,
        b.st_ctime_ns,
    )


def is_sparse(root_fd: int, rel: bytes) -> bool:
    """Whether the file at ``rel`` has holes (fewer blocks than its size);
    ``False`` if it cannot be opened (the send that follows says why)."""
    try:
        fd = open_file(root_fd, rel)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_blocks * 512 < st.st_size


def open_file(base_fd: int, rel: bytes) -> int:
    """Open ``rel`` below ``base_fd`` for reading, following no symlink on
    the way or at the end."""
    dir_fd = open_dir(base_fd, parent(rel))
    try:
        return os.open(basename(rel), O_READ, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


_libc = ctypes.CDLL(None, use_errno=True)


def release_free_memory() -> None:
    """Hand memory freed by Python back to the system. glibc keeps freed
    heap memory, and after a large buffer is freed it raises its mmap
    threshold, so the next 20 MB file read lands on the heap and stays
    resident after it is freed too; malloc_trim(3) returns it."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:  # glibc only
        trim(0)


def sync_filesystem(fd: int) -> None:
    """syncfs(2): flush everything of the filesystem holding ``fd``."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of ``data`` is written (a pipe or a large write
    may take part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
