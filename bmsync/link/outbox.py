"""A local file as the frames that send it: chunks, holes for a sparse
file, then a ``Put`` whose entry describes exactly the bytes sent (or
``PutAbort`` if the file changed while it was read)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from bmsync.core.frames import CHUNK_BYTES, HOLE_MAX_BYTES, Put, PutAbort, PutChunk, PutHole
from bmsync.core.manifest import Entry, Kind, digest_bytes, hash_zeros, new_hasher
from bmsync.fs.files import READ_BYTES, entry_of, kind_of, open_file, read_xattrs, same_version

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
