"""One batch of changes written into a root, confined to its sync set.

The agent writes a sender's batches with it, and the daemon's ``resume
--discard`` its own tree from the peer's copies: both apply operations and
file frames the same way, and get the same ``Applied``. Directory
operations, symlinks, moves and deletes apply as they arrive (they are
atomic one by one); file renames and directory metadata wait for the
commit, so a batch's files appear together and directory mtimes are set
after their children changed. A failed operation is a ``Failure`` in the
``Applied``, never an exception; a stream of file pieces that breaks the
protocol is a ProtocolError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from bmsync.core.errors import ProtocolError
from bmsync.core.frames import Applied, Failure, Put, PutAbort, PutChunk, PutDelta, PutHole
from bmsync.core.manifest import Kind
from bmsync.core.ops import Delete, Mkdir, Rename, SetMeta, Symlink
from bmsync.core.paths import show
from bmsync.fs import fileops
from bmsync.fs.confine import Confined, OpFailed, reason
from bmsync.fs.fileops import Changes, Keeper
from bmsync.fs.staging import Staging

log = structlog.get_logger("bmsync.tree")

TreeOp = Mkdir | Symlink | Rename | Delete | SetMeta
FileFrame = PutChunk | PutHole | Put | PutAbort | PutDelta


class TreeWriter:
    """One batch: ``apply`` operations and ``receive`` file frames, then
    ``commit`` once, or ``drop`` (what was staged is then never applied).
    ``keeper``: told before a file is replaced or deleted (the agent keeps a
    copy of one changed on this node)."""

    def __init__(self, where: Confined, keeper: Keeper | None = None) -> None:
        self._where = where
        self._keeper = keeper
        self._changes = Changes()
        self._staging = Staging(where, self._changes, keeper)
        self._dir_meta: list[SetMeta] = []
        self._ops: dict[type[Any], Callable[[Any], None]] = {
            Mkdir: lambda op: fileops.mkdir(where, op, self._changes),
            Symlink: lambda op: fileops.symlink(where, op, self._changes),
            Rename: lambda op: fileops.rename(where, op, self._changes),
            Delete: lambda op: fileops.delete(where, op, self._changes, keeper),
            SetMeta: self._set_meta,
        }

    def apply(self, op: TreeOp) -> None:
        """Apply ``op`` now (directory metadata: at commit)."""
        path = op.dst if isinstance(op, Rename) else op.path
        try:
            self._ops[type(op)](op)
        except (OpFailed, OSError) as exc:
            self._changes.fail(path, reason(exc))

    def receive(self, frame: FileFrame) -> None:
        """A piece of a file, its end (``Put``), its abort, or a delta."""
        staging = self._staging
        if isinstance(frame, PutChunk):
            staging.receive(frame.path, frame.offset, frame.data, None)
        elif isinstance(frame, PutHole):
            staging.receive(frame.path, frame.offset, b"", None, hole=frame.length)
        elif isinstance(frame, Put):
            if frame.entry.kind != Kind.FILE:
                raise ProtocolError(f"Put {show(frame.path)} with a {frame.entry.kind.name} entry")
            staging.receive(frame.path, frame.offset, frame.data, frame.entry)
        elif isinstance(frame, PutAbort):
            staging.abort(frame.path)
        else:
            staging.delta(frame)

    def _set_meta(self, op: SetMeta) -> None:
        self._where.check_covered(op.path, op.entry.kind == Kind.DIR)
        if op.entry.kind == Kind.DIR:
            self._dir_meta.append(op)  # after the batch's children change
            return
        fileops.set_meta(self._where, op)
        self._changes.touched.append(op.path)

    def commit(self, batch: int) -> Applied:
        """Place the staged files, durably, then the directory metadata:
        what each touched path holds now, and what failed."""
        changes = self._changes
        placed = self._staging.commit()
        for op in self._dir_meta:
            try:
                fileops.set_meta(self._where, op)
                changes.touched.append(op.path)
            except (OpFailed, OSError) as exc:
                changes.failures.append(Failure(op.path, reason(exc)))
        results = [
            (p, placed[p] if p in placed else self._where.entry_now(p))
            for p in dict.fromkeys(changes.touched)
        ]
        log.info("batch_applied", batch=batch, paths=len(results), failures=len(changes.failures))
        kept = [] if self._keeper is None else self._keeper.kept
        return Applied(batch, results, changes.failures, kept)

    def drop(self) -> None:
        """Forget the batch: its temporary files are removed."""
        self._staging.drop()
