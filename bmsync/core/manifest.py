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
from typing import Annotated

import msgspec
import xxhash

from bmsync.core.paths import show

DIGEST_SIZE = 16  # xxh3-128
# The default of ``sync.max_entries``: the most entries a node lists for its
# peer, and the most a sender accepts from it. An agent answering a manifest
# holds up to 0.8 KiB an entry (its scan and digest cache), so this keeps it
# near 200 MiB even when a leaked key has filled its tree; a BlueMind /etc
# holds a few thousand entries.
MAX_ENTRIES = 200_000


class Kind(enum.IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3


# Range checks run in msgspec's decoder (C). The rules across fields are
# ``check_entry``'s, applied to every entry that arrives in a frame; an
# Entry built here from a stat result, or read back from this node's own
# state files, is not checked again (100,000 of them cost 0.2 s in Python).
# Entries hold no references to other objects that could form a cycle, so
# the garbage collector need not track them (gc=False): 100,000 of them no
# longer slow every collection, and decoding is three times faster.
Mode = Annotated[int, msgspec.Meta(ge=0, le=0o7777)]
Owner = Annotated[int, msgspec.Meta(ge=0, lt=2**32)]
Size = Annotated[int, msgspec.Meta(ge=0)]
# Linux lists at most 64 KiB of xattr names (XATTR_LIST_MAX), each ending in
# NUL and at least "user.x" long: no file has more than this many. Checked by
# the decoder from the array's header: a frame of 1.4 million 6-byte xattrs
# would otherwise decode to 120 MiB of tuples.
MAX_XATTRS = 65536 // len(b"user.x\0")
Xattrs = Annotated[tuple[tuple[bytes, bytes], ...], msgspec.Meta(max_length=MAX_XATTRS)]


class Entry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    kind: Kind
    mode: Mode  # permission bits only (st_mode & 0o7777)
    uid: Owner
    gid: Owner
    mtime_ns: int
    size: Size = 0
    digest: bytes = b""  # xxh3-128 of the content; files only
    target: bytes = b""  # symlinks only
    xattrs: Xattrs = ()  # sorted by name

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


def check_entry(entry: Entry) -> None:
    """ValueError unless ``entry`` is consistent: a digest exactly for
    files, a target (without NUL) exactly for symlinks, xattr names
    non-empty and without NUL."""
    if len(entry.digest) != (DIGEST_SIZE if entry.kind is Kind.FILE else 0):
        raise ValueError(f"digest of {len(entry.digest)} bytes for a {entry.kind.name}")
    if entry.target:
        if entry.kind is not Kind.SYMLINK or b"\0" in entry.target:
            raise ValueError("symlink target misplaced or containing NUL")
    elif entry.kind is Kind.SYMLINK:
        raise ValueError("symlink target missing")
    for name, _ in entry.xattrs:
        if not name or b"\0" in name:
            raise ValueError("empty extended attribute name or one containing NUL")


_ENCODER = msgspec.msgpack.Encoder()
_DIGEST_SLICE = 4096


def manifest_digest(entries: Mapping[bytes, Entry]) -> bytes:
    """One digest for a whole manifest, the same on both nodes for the same
    entries whatever their order: the entries by path, encoded a slice at a
    time (100,000 of them are never copied into one list or buffer)."""
    paths = sorted(entries)
    hasher = new_hasher()
    for start in range(0, len(paths), _DIGEST_SLICE):
        part = paths[start : start + _DIGEST_SLICE]
        hasher.update(_ENCODER.encode([(p, entries[p]) for p in part]))
    return hasher.digest()


def digest_bytes(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)


def new_hasher() -> xxhash.xxh3_128:
    return xxhash.xxh3_128()


_ZEROS = memoryview(bytes(1 << 20))


def hash_zeros(hasher: xxhash.xxh3_128, length: int) -> None:
    """Feed ``length`` zero bytes (a hole of a sparse file) to ``hasher``."""
    while length > 0:
        piece = min(length, len(_ZEROS))
        hasher.update(_ZEROS[:piece])
        length -= piece


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
