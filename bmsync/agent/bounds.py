"""What an agent's session may hold, whatever its sender sends.

The sender may be hostile (its key may have leaked): whatever it sends,
what a session holds is bounded, so the agent's peak memory stays under
100 MiB (README, "How it works"; bench/agent_memory.py measures it):

=========================  ==============================================
what could grow            its bound
=========================  ==============================================
input not yet decoded      one frame (``MAX_FRAME_BYTES``, 8 MiB) and one
                           read (1 MiB); a frame is decoded in place
a decoded frame            about its own size: only the frames an agent
                           takes are decoded (``ToAgent``), a delta has at
                           most ``MAX_DELTA_OPS`` operations and an entry
                           ``MAX_XATTRS`` xattrs, checked before building
a delta's result           ``entry.size``, at most ``DELTA_MAX_BYTES``,
                           written to the staged file 1 MiB at a time; the
                           base is read a piece at a time, never whole
                           (``fs/staging.py``)
literal inflation          the room left in that result (plus one byte,
                           to refuse it)
staged files (``staged``,  ``MAX_STAGED`` files (``fs/staging.py``), and
``dirs``)                  the two bounds below
a batch's records until    ``MAX_BATCH_RECORDS`` frames that keep
its Commit: staged files,  something (20,000) and ``MAX_BATCH_HELD_BYTES``
expectations, failures,    (24 MiB, counted generously: see ``_held``),
touched paths, directory   checked before each frame is applied; past
metadata, backups          either, a ProtocolError ends the session
                           and nothing staged is applied
replies                    ``FLUSH_BYTES`` (1 MiB, ``agent/stdio.py``) wait
                           before they are written; a Fetch goes a chunk
                           at a time
=========================  ==============================================

Bounded by this node's tree, not by what is sent: a ``ManifestRequest``
holds this node's own manifest, about 0.5 KiB per entry of its sync set (its
parts are sent one by one, never all held), and a scan past
``max_entries`` (``sync.max_entries``) stops with TreeTooLarge, however
many files a sender has created.

The daemon's own restore (``resume --discard``) writes through the same
TreeWriter without these bounds: what it writes comes from its own plan.
"""

from __future__ import annotations

from bmsync.core.errors import ProtocolError
from bmsync.core.frames import Expect, Put, PutChunk, PutDelta
from bmsync.core.manifest import Entry
from bmsync.core.ops import Delete, Mkdir, Rename, SetMeta, Symlink
from bmsync.core.paths import show
from bmsync.fs.staging import MAX_STAGED

# What a batch keeps until its Commit (see the table above). A bmsync sender
# commits every 1000 operations (session.BATCH_MAX_OPS), each with at most an
# Expect and, per attempt to send a file (3), its first chunk: far below
# either bound. Past one, the sender is broken or hostile: a ProtocolError
# ends the session, and nothing it staged is applied.
MAX_BATCH_RECORDS = MAX_STAGED
MAX_BATCH_HELD_BYTES = 24 * 1024 * 1024
# What one record costs, counted generously (measured with tracemalloc: 130
# to 930 bytes, xxh3 state included): the Python objects around one path (a
# Staged, an Expect's dict slot, a Failure and its reason, list slots)...
_RECORD_BYTES = 1024
# ...its path, kept up to this many times over (in a Failure's reason too,
# escaped: show() spells a byte that is not UTF-8 in 4 characters)...
_PATH_COPIES = 5
# ...and each extended attribute of an entry kept whole (a tuple of two
# bytes objects: 105 bytes measured), besides its name and value.
_XATTR_BYTES = 128

Held = Expect | PutChunk | Put | PutDelta | Mkdir | Symlink | Rename | Delete | SetMeta
# The frames a batch keeps something of until its commit (a path, an entry).
HELD = (Expect, PutChunk, Put, PutDelta, Mkdir, Symlink, Rename, Delete, SetMeta)


class BatchBounds:
    """What one batch may keep until its commit, counted as its frames
    arrive."""

    def __init__(self) -> None:
        self.records = 0
        self.held_bytes = 0

    def hold(self, frame: Held) -> None:
        """Count what this batch may keep of ``frame`` until its commit
        (before the frame is applied): past MAX_BATCH_RECORDS records or
        MAX_BATCH_HELD_BYTES, a ProtocolError that ends the session."""
        records, size = _held(frame)
        self.records += records
        self.held_bytes += size
        if self.records > MAX_BATCH_RECORDS:
            raise ProtocolError(
                f"more than {MAX_BATCH_RECORDS} operations and Expect frames in one "
                f"batch without a Commit (at {type(frame).__name__} {show(_path_of(frame))})"
            )
        if self.held_bytes > MAX_BATCH_HELD_BYTES:
            raise ProtocolError(
                f"one batch's paths and entries would keep more than {MAX_BATCH_HELD_BYTES} "
                f"bytes until its Commit (at {type(frame).__name__} {show(_path_of(frame))})"
            )


def _path_of(frame: Held) -> bytes:
    return frame.dst if isinstance(frame, Rename) else frame.path


def _held(frame: Held) -> tuple[int, int]:
    """(records, bytes): at most what a batch keeps of ``frame`` until its
    commit. A file's later chunks add nothing to the record its first one
    made (its ``Put`` adds the entry); see the constants for the rest."""
    if isinstance(frame, PutChunk | Put) and frame.offset > 0:
        return 0, _entry_bytes(frame.entry) if isinstance(frame, Put) else 0
    paths = len(frame.src) + len(frame.dst) if isinstance(frame, Rename) else len(frame.path)
    size = _RECORD_BYTES + _PATH_COPIES * paths
    if not isinstance(frame, Expect | PutChunk | Delete):
        size += _entry_bytes(frame.entry)
    return 1, size


def _entry_bytes(entry: Entry) -> int:
    return len(entry.target) + sum(_XATTR_BYTES + len(k) + len(v) for k, v in entry.xattrs)
