"""The manifest: what a tree holds, path by path, with content digests.

An ``Entry`` is everything bmsync reproduces on the peer: kind, permission
bits, numeric owner and group, mtime to the nanosecond, size, the xxh3-128
digest of a file's content, a symlink's target, and extended attributes
(POSIX ACLs travel as ``system.posix_acl_*``). Two entries are the same when
all of those are; change detection never relies on size and mtime alone.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import msgspec
import xxhash

from bmsync.core.paths import show

DIGEST_SIZE = 16  # xxh3-128


class Kind(enum.IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3


class Entry(msgspec.Struct, frozen=True, array_like=True):
    kind: Kind
    mode: int  # permission bits only (st_mode & 0o7777)
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    digest: bytes = b""  # xxh3-128 of the content; files only
    target: bytes = b""  # symlinks only
    xattrs: tuple[tuple[bytes, bytes], ...] = ()  # sorted by name

    def __post_init__(self) -> None:
        # ValueError, so that msgspec reports a bad entry as a bad frame.
        if not 0 <= self.mode <= 0o7777:
            raise ValueError(f"mode {self.mode:o} is not permission bits")
        if not (0 <= self.uid < 2**32 and 0 <= self.gid < 2**32):
            raise ValueError(f"owner {self.uid}:{self.gid} out of range")
        if self.size < 0:
            raise ValueError(f"negative size {self.size}")
        if len(self.digest) != (DIGEST_SIZE if self.kind == Kind.FILE else 0):
            raise ValueError(f"digest of {len(self.digest)} bytes for a {self.kind.name}")
        if (self.kind == Kind.SYMLINK) != bool(self.target) or b"\0" in self.target:
            raise ValueError("symlink target missing, misplaced or containing NUL")
        if any(not name or b"\0" in name for name, _ in self.xattrs):
            raise ValueError("empty extended attribute name or one containing NUL")

    def same_content(self, other: Entry) -> bool:
        """Whether ``other`` can become ``self`` by metadata changes alone."""
        return (
            self.kind == other.kind
            and self.digest == other.digest
            and self.size == other.size
            and self.target == other.target
        )

    def same_meta(self, other: Entry) -> bool:
        if self.kind == Kind.SYMLINK:
            # Linux has no symlink permissions and no user xattrs on symlinks.
            return (self.uid, self.gid, self.mtime_ns) == (other.uid, other.gid, other.mtime_ns)
        return (self.mode, self.uid, self.gid, self.mtime_ns, self.xattrs) == (
            other.mode,
            other.uid,
            other.gid,
            other.mtime_ns,
            other.xattrs,
        )


Manifest = Mapping[bytes, Entry]


def digest_bytes(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)


def new_hasher() -> xxhash.xxh3_128:
    return xxhash.xxh3_128()


def differences(local: Entry | None, peer: Entry | None) -> list[str]:
    """What differs between two entries, as words for a report."""
    if local is None and peer is None:
        return []
    if local is None:
        return ["only on peer"]
    if peer is None:
        return ["missing on peer"]
    if local.kind != peer.kind:
        return [f"kind {local.kind.name.lower()} here, {peer.kind.name.lower()} on peer"]
    out: list[str] = []
    if local.digest != peer.digest or local.size != peer.size:
        out.append("content")
    if local.target != peer.target:
        out.append(f"link target {show(local.target)[1:]!r} vs {show(peer.target)[1:]!r}")
    if local.kind != Kind.SYMLINK and local.mode != peer.mode:
        out.append(f"mode {local.mode:04o} vs {peer.mode:04o}")
    if (local.uid, local.gid) != (peer.uid, peer.gid):
        out.append(f"owner {local.uid}:{local.gid} vs {peer.uid}:{peer.gid}")
    if local.mtime_ns != peer.mtime_ns:
        out.append("mtime")
    if local.kind != Kind.SYMLINK and local.xattrs != peer.xattrs:
        out.append("xattrs")
    return out
