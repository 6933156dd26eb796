"""Protocol frames (sans I/O); their codec is ``codec``, the frames of the
HA side are in ``ha_frames``.

Every frame is a frozen ``msgspec.Struct`` with a ``type`` tag; decoding
validates types, and the frames that carry paths validate them too, so a
decoded frame is well formed.

A session, sender (active node) to agent (passive node)::

    -> Hello                      <- Welcome | Refuse
    -> ManifestRequest            <- ManifestPart ... (last=True)
    -> Mkdir | PutChunk* (Put | PutAbort) | PutDelta | Symlink | Rename | Delete | SetMeta ...
    -> Commit(batch)              <- Applied(batch, results, failures)
    -> Fetch(path)                <- PutChunk* (Put | PutAbort)   (restoring)
    -> MountsRequest(devices)     <- MountsReport                  (ha storage mount)
    -> Bye
    any frame that breaks the protocol <- ErrorFrame, then the agent hangs up

An HA operation (switchover) opens a session of purpose ``ha`` and sends
its steps for the agent's node, one at a time::

    -> Hello(purpose=ha)          <- Welcome | Refuse (another operation runs there)
    -> HaRequest(action)          <- HaAnswer
    -> Bye

The sender does not wait between frames: ops and commits are pipelined and
the ``Applied`` answers come back in order.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from bmsync.core.delta import DELTA_MAX_BYTES, MAX_DELTA_OPS, DeltaOp
from bmsync.core.errors import ProtocolError
from bmsync.core.ha_frames import HaAnswer, HaRequest, MountsReport, MountsRequest
from bmsync.core.manifest import DIGEST_SIZE, Entry, check_entry
from bmsync.core.ops import Delete, Mkdir, Rename, SetMeta, Symlink
from bmsync.core.paths import check_relpath, show
from bmsync.core.roles import Refusal, RefusalCode, Role, Stamp, check_epoch

# 2: PutHole (sparse files keep their holes); 3: MountsRequest
PROTOCOL_VERSION = 3
# A frame holds at most one data chunk plus its metadata; 8 MiB bounds what a
# hostile or broken peer can make the other side buffer.
MAX_FRAME_BYTES = 8 * 1024 * 1024
# Files travel in chunks of this size, so memory stays flat for any file.
CHUNK_BYTES = 1024 * 1024


class Purpose(enum.StrEnum):
    WRITE = "write"  # resync: takes the agent's lock
    READ = "read"  # verify, dry runs: manifest only, never writes
    HA = "ha"  # an HA operation's steps on this node (HaRequest); takes its operation lock


class Hello(msgspec.Struct, frozen=True, tag="hello"):
    """The sender's (node, role, epoch): its claim, judged by the agent."""

    version: int
    node: str
    role: Role
    epoch: int
    purpose: Purpose
    software: str

    def __post_init__(self) -> None:
        check_epoch(self.epoch, "Hello epoch")


class Welcome(msgspec.Struct, frozen=True, tag="welcome"):
    """The agent's node, role and epoch, and the highest (epoch, node) it
    has seen, which now includes the sender's."""

    version: int
    node: str
    role: Role
    epoch: int
    seen_epoch: int = 0
    seen_node: str = ""

    def __post_init__(self) -> None:
        check_epoch(self.epoch, "Welcome epoch")
        check_epoch(self.seen_epoch, "Welcome seen_epoch")


class Refuse(msgspec.Struct, frozen=True, tag="refuse"):
    """``code``: a ``RefusalCode``; the role and highest (epoch, node) seen
    on the refusing node travel back so the sender can record them."""

    reason: str
    node: str
    role: Role
    epoch: int
    code: str = ""
    seen_epoch: int = 0
    seen_node: str = ""

    def __post_init__(self) -> None:
        check_epoch(self.epoch, "Refuse epoch")
        check_epoch(self.seen_epoch, "Refuse seen_epoch")

    def refusal(self) -> Refusal:
        """What the refusing node reported, typed."""
        seen = Stamp(self.seen_epoch, self.seen_node)
        return Refusal(self.node, self.role, seen, RefusalCode.parse(self.code), self.reason)


class ManifestRequest(msgspec.Struct, frozen=True, tag="manifest?"):
    """``fresh``: read every file (``verify``), not the agent's digest cache.
    ``expect``: the ``manifest_digest`` of the manifest the sender believes
    the agent holds; if the agent's scan gives exactly that, it answers
    ``ManifestPart([], last=True, unchanged=True)`` instead of every entry."""

    fresh: bool = False
    expect: bytes = b""

    def __post_init__(self) -> None:
        if self.expect and len(self.expect) != DIGEST_SIZE:
            raise ValueError(f"expect is {len(self.expect)} bytes, not a digest")


class ManifestPart(msgspec.Struct, frozen=True, tag="manifest"):
    entries: list[tuple[bytes, Entry]]
    last: bool
    unchanged: bool = False  # the manifest is the one ManifestRequest.expect named

    def __post_init__(self) -> None:
        if self.unchanged and (self.entries or not self.last):
            raise ValueError("an unchanged manifest carries no entries and is the last part")
        for path, entry in self.entries:
            check_relpath(path)
            check_entry(entry)


class PutChunk(msgspec.Struct, frozen=True, tag="chunk"):
    """Content of a file at ``offset``; more chunks or the ``Put`` follow."""

    path: bytes
    offset: int
    data: bytes

    def __post_init__(self) -> None:
        check_relpath(self.path)
        if self.offset < 0:
            raise ProtocolError(f"negative offset {self.offset}")


class Put(msgspec.Struct, frozen=True, tag="put"):
    """The last chunk of a file and what the whole must be (``entry``)."""

    path: bytes
    offset: int
    data: bytes
    entry: Entry

    def __post_init__(self) -> None:
        check_relpath(self.path)
        if self.offset < 0:
            raise ProtocolError(f"negative offset {self.offset}")
        check_entry(self.entry)


# A hole frame stands for at most this many zero bytes: the agent hashes them
# (the digest covers the whole file), so one small frame costs it at most
# about a tenth of a second.
HOLE_MAX_BYTES = 1 << 30


class PutHole(msgspec.Struct, frozen=True, tag="hole"):
    """``length`` zero bytes of a sparse file at ``offset``, left unwritten
    (a hole) on the agent; chunks, holes or the ``Put`` follow."""

    path: bytes
    offset: int
    length: int

    def __post_init__(self) -> None:
        check_relpath(self.path)
        if self.offset < 0:
            raise ProtocolError(f"negative offset {self.offset}")
        if not 0 < self.length <= HOLE_MAX_BYTES:
            raise ProtocolError(f"hole of {self.length} bytes (1 to {HOLE_MAX_BYTES})")


class PutAbort(msgspec.Struct, frozen=True, tag="abort"):
    """Drop what was received of ``path``: it changed while being read."""

    path: bytes

    def __post_init__(self) -> None:
        check_relpath(self.path)


class Fetch(msgspec.Struct, frozen=True, tag="fetch"):
    """Ask the agent for a file's content: it answers with ``PutChunk``* and
    ``Put`` (the file and its entry), or ``PutAbort`` if it cannot."""

    path: bytes

    def __post_init__(self) -> None:
        check_relpath(self.path)


class Commit(msgspec.Struct, frozen=True, tag="commit"):
    batch: int


class PutDelta(msgspec.Struct, frozen=True, tag="delta"):
    """A file as a delta against the version the agent holds (``base``, its
    xxh3-128 digest); ``entry`` describes the result. The agent applies it
    only if its file matches ``base``, builds no more than ``entry.size``
    bytes, and checks the result's digest. At most ``MAX_DELTA_OPS``
    operations (the decoder refuses more before building any), for a result
    of at most ``DELTA_MAX_BYTES``."""

    path: bytes
    base: bytes
    ops: Annotated[list[DeltaOp], msgspec.Meta(max_length=MAX_DELTA_OPS)]
    entry: Entry

    def __post_init__(self) -> None:
        check_relpath(self.path)
        if len(self.base) != DIGEST_SIZE:
            raise ProtocolError(f"delta base digest of {len(self.base)} bytes")
        check_entry(self.entry)
        if len(self.ops) > MAX_DELTA_OPS:
            raise ProtocolError(
                f"delta of {show(self.path)} has {len(self.ops)} operations, "
                f"more than the {MAX_DELTA_OPS} allowed"
            )
        if self.entry.size > DELTA_MAX_BYTES:
            raise ProtocolError(
                f"delta of {show(self.path)} declares a {self.entry.size}-byte result, "
                f"more than the {DELTA_MAX_BYTES} bytes a delta may build"
            )


# Failure codes the sender acts on.
BASE_MISMATCH = "base-mismatch"


class Failure(msgspec.Struct, frozen=True, array_like=True):
    path: bytes
    reason: str
    code: str = ""  # machine-readable, e.g. BASE_MISMATCH

    def __post_init__(self) -> None:
        check_relpath(self.path)


class Expect(msgspec.Struct, frozen=True, tag="expect"):
    """What the sender believes is at ``path`` on the agent (the digest of
    the version bmsync last wrote there; empty: nothing). Sent before an
    operation that replaces or deletes a file: if the agent's file differs,
    someone changed it on the passive node, and the agent keeps a copy
    under state_dir/backups/ before it is overwritten."""

    path: bytes
    digest: bytes

    def __post_init__(self) -> None:
        check_relpath(self.path)
        if self.digest and len(self.digest) != DIGEST_SIZE:
            raise ProtocolError(f"expected digest of {len(self.digest)} bytes")


class Applied(msgspec.Struct, frozen=True, tag="applied"):
    """What a batch left on the peer: the entry now at each path it touched
    (``None`` where nothing is), the operations that failed, and the files
    changed on the peer since bmsync wrote them, with where a copy of each
    was kept before it was replaced."""

    batch: int
    results: list[tuple[bytes, Entry | None]]
    failures: list[Failure]
    backups: list[tuple[bytes, str]] = []

    def __post_init__(self) -> None:
        for path, entry in self.results:
            check_relpath(path)
            if entry is not None:
                check_entry(entry)
        for path, _ in self.backups:
            check_relpath(path)


class ErrorFrame(msgspec.Struct, frozen=True, tag="error"):
    message: str


class Bye(msgspec.Struct, frozen=True, tag="bye"):
    pass


# The frames an agent accepts. Its decoder knows no other, so it never builds
# one it would refuse anyway: an 8 MiB ManifestPart of minimal entries
# decodes to 170 MiB of objects.
ToAgent = (
    Hello
    | ManifestRequest
    | MountsRequest
    | HaRequest
    | PutChunk
    | PutHole
    | Put
    | PutAbort
    | PutDelta
    | Expect
    | Fetch
    | Mkdir
    | Symlink
    | Rename
    | Delete
    | SetMeta
    | Commit
    | Bye
)

# Every frame: those an agent accepts, and those only an agent sends.
Frame = ToAgent | Welcome | Refuse | ManifestPart | MountsReport | HaAnswer | Applied | ErrorFrame
