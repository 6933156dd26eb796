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
from collections.abc import Iterator
from pathlib import Path

from bmsync.core.frames import CHUNK_BYTES, HOLE_MAX_BYTES, Put, PutAbort, PutChunk, PutHole
from bmsync.core.manifest import Entry, Kind, digest_bytes, hash_zeros, new_hasher
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


FileFrame = PutChunk | PutHole | Put | PutAbort


def file_frames(root_fd: int, path: bytes) -> Iterator[FileFrame]:
    """Stream a local file as chunks (and, for a sparse file, holes), then
    either a ``Put`` whose entry (and digest) describe exactly the bytes
    sent, or ``PutAbort`` if the file changed while it was read."""
    fd = open_file(root_fd, path)
    try:
        before = os.fstat(fd)
        if kind_of(before.st_mode) != Kind.FILE:
            raise OSError(errno.ENOENT, "no longer a regular file")
        xattrs = read_xattrs(fd)
        if before.st_blocks * 512 < before.st_size:
            yield from _sparse_frames(fd, path, before, xattrs)
            return
        hasher = new_hasher()
        offset = 0
        chunk = os.read(fd, CHUNK_BYTES)
        while True:
            following = os.read(fd, CHUNK_BYTES) if len(chunk) == CHUNK_BYTES else b""
            hasher.update(chunk)
            if not following:
                after = os.fstat(fd)
                if not same_version(before, after) or after.st_size != offset + len(chunk):
                    yield PutAbort(path)
                    return
                entry = entry_of(after, Kind.FILE, digest=hasher.digest(), xattrs=xattrs)
                yield Put(path, offset, chunk, entry)
                return
            yield PutChunk(path, offset, chunk)
            offset += len(chunk)
            chunk = following
    finally:
        os.close(fd)


def _sparse_frames(
    fd: int, path: bytes, before: os.stat_result, xattrs: tuple[tuple[bytes, bytes], ...]
) -> Iterator[FileFrame]:
    """A file with fewer blocks than its size: its data regions as chunks
    and its holes as ``PutHole`` (never read, never written on the agent),
    found with SEEK_DATA and SEEK_HOLE; then an empty ``Put`` at its end."""
    hasher = new_hasher()
    offset, size = 0, before.st_size
    while offset < size:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            data = size  # a hole up to the end
        while offset < min(data, size):
            length = min(data, size) - offset
            length = min(length, HOLE_MAX_BYTES)
            hash_zeros(hasher, length)
            yield PutHole(path, offset, length)
            offset += length
        if offset >= size:
            break
        hole = os.lseek(fd, offset, os.SEEK_HOLE)
        while offset < hole:
            chunk = os.pread(fd, min(CHUNK_BYTES, hole - offset), offset)
            if not chunk:
                break  # shrunk meanwhile: the check below says so
            hasher.update(chunk)
            yield PutChunk(path, offset, chunk)
            offset += len(chunk)
        else:
            continue
        break
    after = os.fstat(fd)
    if not same_version(before, after) or after.st_size != offset:
        yield PutAbort(path)
        return
    yield Put(path, offset, b"", entry_of(after, Kind.FILE, digest=hasher.digest(), xattrs=xattrs))


def read_whole(root_fd: int, path: bytes, max_bytes: int) -> tuple[bytes, Entry] | None:
    """A regular file's content and entry, read in one piece; ``None`` if it
    is larger than ``max_bytes`` or changed while it was read."""
    fd = open_file(root_fd, path)
    try:
        before = os.fstat(fd)
        if kind_of(before.st_mode) != Kind.FILE or before.st_size > max_bytes:
            return None
        xattrs = read_xattrs(fd)
        # in one read where it can be: joining chunks held the file twice
        chunks = []
        while chunk := os.read(fd, max(READ_BYTES, before.st_size + 1)):
            chunks.append(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)  # b"" if empty
    if not same_version(before, after) or len(data) != after.st_size:
        return None
    return data, entry_of(after, Kind.FILE, digest=digest_bytes(data), xattrs=xattrs)


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
