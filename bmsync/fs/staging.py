"""File content on its way in: staged next to its target, verified, and
renamed in only when the batch commits.

Content lands in a temporary file in the target's directory (``O_EXCL``,
mode 0600), chunk by chunk; a hole is left unwritten (the file stays
sparse), and a delta is applied against this node's file a piece at a
time, never built whole. The result must have the sender's size and digest;
it then gets its owner, mode, xattrs and mtime. At commit every staged file
is made durable, then renamed over its target, then the directories are
fsynced: a batch's files appear together, and a reader sees the old file or
the new one, never a mix. Nothing staged is applied if the batch is dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import structlog

from bmsync.core.delta import DELTA_MAX_BYTES, Copy, DeltaError, delta_pieces
from bmsync.core.errors import ProtocolError
from bmsync.core.frames import BASE_MISMATCH, Failure, PutDelta
from bmsync.core.manifest import Entry, Kind, hash_zeros, new_hasher
from bmsync.core.paths import basename, join, parent, show
from bmsync.fs.confine import Confined, OpFailed, reason
from bmsync.fs.fileops import Changes, Keeper, set_meta_fd
from bmsync.fs.files import (
    O_READ,
    hash_fd,
    kind_of,
    open_file,
    same_version,
    sync_filesystem,
    write_all,
)
from bmsync.fs.tempfiles import create_temp, remove_temp

log = structlog.get_logger("bmsync.tree")

# A batch may stage this many files; more is a sender bug or an attack on
# the writer's file descriptors and disk.
MAX_STAGED = 20_000
# From this many files (or directories) in a batch, one syncfs beats an
# fsync per file (or directory).
SYNCFS_FROM_FILES = 16


@dataclass
class Staged:
    path: bytes
    dir_fd: int  # borrowed from Staging.dirs; -1 when nothing was staged
    tmp: bytes
    fd: int | None
    size: int = 0
    hasher: Any = field(default_factory=new_hasher)
    entry: Entry | None = None  # set once the content is complete and verified
    failed: bool = False  # the rest of its chunks are read and dropped

    @property
    def tmp_path(self) -> bytes:
        """Where its temporary file is, below the root."""
        return join(parent(self.path), self.tmp)


class Staging:
    """The files of one batch until it commits (or is dropped). A file
    that fails is a failure in ``changes``; a stream of pieces that breaks
    the protocol is a ProtocolError."""

    def __init__(self, where: Confined, changes: Changes, keeper: Keeper | None) -> None:
        self._where = where
        self._changes = changes
        self._keeper = keeper
        self.staged: dict[bytes, Staged] = {}
        # one descriptor per directory holding staged files, shared by its
        # files (a batch of 1000 files must not need 1000), closed at commit
        self.dirs: dict[bytes, int] = {}

    def receive(
        self, path: bytes, offset: int, data: bytes, entry: Entry | None, hole: int = 0
    ) -> None:
        """A piece of a file: ``data`` at ``offset``, or a ``hole`` of that
        many zero bytes, left unwritten; ``entry``: the file is complete."""
        staged = self.staged.get(path)
        if offset == 0:
            if staged is not None:
                self.discard(staged)
                del self.staged[path]
            if len(self.staged) >= MAX_STAGED:
                raise ProtocolError(f"more than {MAX_STAGED} files in one batch")
            try:
                self._where.check_covered(path, False)
                staged = self._stage(path)
            except (OpFailed, OSError) as exc:
                self._changes.fail(path, reason(exc))
                staged = Staged(path, -1, b"", None, failed=True)
            self.staged[path] = staged
        elif staged is None or staged.entry is not None:
            raise ProtocolError(f"chunk at offset {offset} of {show(path)} without its start")
        if staged.size != offset:
            raise ProtocolError(f"chunk of {show(path)} at offset {offset}, expected {staged.size}")
        staged.size += len(data) + hole
        if staged.failed:
            return
        assert staged.fd is not None
        try:
            if hole:
                hash_zeros(staged.hasher, hole)
                os.lseek(staged.fd, hole, os.SEEK_CUR)
            staged.hasher.update(data)
            write_all(staged.fd, data)
            if entry is not None:
                self._finish(staged, entry)
        except (OSError, OpFailed) as exc:
            self._changes.fail(path, reason(exc))
            self.discard(staged)
            staged.failed = True

    def abort(self, path: bytes) -> None:
        """The sender could not read ``path`` to its end: forget it."""
        staged = self.staged.pop(path, None)
        if staged is not None:
            self.discard(staged)

    def delta(self, frame: PutDelta) -> None:
        """Apply a delta to this node's file, straight into a staged
        temporary file: the base is read and the literals inflated a piece
        at a time, and no more than the declared ``entry.size`` is built
        (the decoder has bounded the operations and that size)."""
        if frame.entry.kind != Kind.FILE:
            raise ProtocolError(f"PutDelta {show(frame.path)} with a {frame.entry.kind.name} entry")
        self.abort(frame.path)
        if len(self.staged) >= MAX_STAGED:
            raise ProtocolError(f"more than {MAX_STAGED} files in one batch")
        base: tuple[int, os.stat_result] | None = None
        try:
            self._where.check_covered(frame.path, False)
            base = self._delta_base(frame.path, frame.base)
            if base is None:
                self._base_mismatch(frame.path)
                return
            if self._keeper is not None:
                self._keeper.base_verified(frame.path, frame.base)
            staged = self._stage(frame.path)
            self.staged[frame.path] = staged
            if not self._write_delta(staged, base, frame):
                del self.staged[frame.path]
                self.discard(staged)
                self._base_mismatch(frame.path)
                return
            self._finish(staged, frame.entry)
        except (DeltaError, OpFailed, OSError) as exc:
            why = f"bad delta: {exc}" if isinstance(exc, DeltaError) else reason(exc)
            self._changes.fail(frame.path, why)
            self.abort(frame.path)
        finally:
            if base is not None:
                os.close(base[0])

    def _base_mismatch(self, path: bytes) -> None:
        self._changes.touched.append(path)  # Applied tells what is here instead
        self._changes.fail(
            path,
            "this node's copy is not the version the delta was made against; "
            "the whole file will be sent",
            BASE_MISMATCH,
        )

    def _delta_base(self, path: bytes, digest: bytes) -> tuple[int, os.stat_result] | None:
        """This node's regular file at ``path``, open, if its content has
        ``digest`` (read a piece at a time, never whole); ``None`` if not,
        or if it is too large to be a delta's base."""
        try:
            fd = open_file(self._where.root_fd, path)
        except OSError:
            return None
        matches = False
        try:
            st = os.fstat(fd)
            matches = (
                kind_of(st.st_mode) == Kind.FILE
                and st.st_size <= DELTA_MAX_BYTES
                and hash_fd(fd) == (digest, st.st_size)
            )
        except OSError:
            matches = False
        finally:
            if not matches:
                os.close(fd)
        return (fd, st) if matches else None

    def _write_delta(
        self, staged: Staged, base: tuple[int, os.stat_result], frame: PutDelta
    ) -> bool:
        """Write the delta's result to ``staged``, a piece at a time; False if
        the base changed meanwhile (nothing of it is then applied)."""
        base_fd, before = base
        assert staged.fd is not None
        for piece in delta_pieces(frame.ops, before.st_size, frame.entry.size):
            if isinstance(piece, Copy):
                data = os.pread(base_fd, piece.length, piece.offset)
                if len(data) != piece.length:
                    return False
            else:
                data = piece
            staged.hasher.update(data)
            write_all(staged.fd, data)
            staged.size += len(data)
        return same_version(before, os.fstat(base_fd))

    def _stage(self, path: bytes) -> Staged:
        dir_fd = self.dirs.get(parent(path))
        if dir_fd is None:
            dir_fd = self.dirs[parent(path)] = self._where.open_parent(path)
        tmp, fd = create_temp(dir_fd)
        return Staged(path, dir_fd, tmp, fd)

    def _finish(self, staged: Staged, entry: Entry) -> None:
        assert staged.fd is not None
        digest = staged.hasher.digest()
        if staged.size != entry.size or digest != entry.digest:
            raise OpFailed(
                f"received {staged.size} bytes with digest {digest.hex()}, the sender "
                f"announced {entry.size} bytes with {entry.digest.hex()}; not applied"
            )
        os.ftruncate(staged.fd, entry.size)  # a hole at the end has no bytes written
        set_meta_fd(staged.fd, entry, times=True)
        os.close(staged.fd)  # made durable at commit, before the rename
        staged.fd = None
        staged.entry = entry

    def discard(self, staged: Staged) -> None:
        if staged.fd is not None:
            os.close(staged.fd)
            staged.fd = None
        if staged.dir_fd >= 0:
            remove_temp(staged.dir_fd, staged.tmp, staged.tmp_path)
            staged.dir_fd = -1

    def drop(self) -> None:
        """Remove the uncommitted temporary files, close the directories."""
        for staged in self.staged.values():
            if staged.fd is not None:
                os.close(staged.fd)
                staged.fd = None
            if staged.dir_fd >= 0 and staged.tmp:
                remove_temp(staged.dir_fd, staged.tmp, staged.tmp_path)
        for dir_fd in self.dirs.values():
            os.close(dir_fd)
        self.staged.clear()
        self.dirs.clear()

    # -- commit ----------------------------------------------------------

    def commit(self) -> dict[bytes, Entry]:
        """Rename every complete file in, durably, after the keeper saw what
        it replaces; the entries placed (verified content, metadata set from
        the entry: no need to read them back). Then the directories of all
        the batch's changes are fsynced, and nothing is staged any more."""
        failures = self._changes.failures
        self._make_durable()
        placed: dict[bytes, Entry] = {}
        for staged in self.staged.values():
            if staged.entry is None:
                if not staged.failed:
                    failures.append(
                        Failure(staged.path, "file content incomplete at commit; not applied")
                    )
                self.discard(staged)
                continue
            try:
                if self._keeper is not None:
                    self._keeper.before_change(staged.dir_fd, staged.path, "replaced")
                os.rename(
                    staged.tmp,
                    basename(staged.path),
                    src_dir_fd=staged.dir_fd,
                    dst_dir_fd=staged.dir_fd,
                )
            except (OSError, OpFailed) as exc:
                failures.append(Failure(staged.path, reason(exc)))
                self.discard(staged)
                continue
            staged.tmp = b""  # renamed: nothing left to clean up
            self._changes.touched.append(staged.path)
            placed[staged.path] = staged.entry
        try:
            self._sync_dirs()
        finally:
            self.drop()
        return placed

    def _make_durable(self) -> None:
        """Every staged file's data on disk before any is renamed in: one
        syncfs for a large batch (an initial sync of 100,000 files must not
        cost 100,000 fsyncs), one fsync per file for a small one (a busy
        filesystem is not flushed for one edit)."""
        ready = [s for s in self.staged.values() if s.entry is not None]
        if not ready:
            return
        if len(ready) >= SYNCFS_FROM_FILES:
            try:
                sync_filesystem(ready[0].dir_fd)
            except OSError as exc:
                for staged in ready:
                    self._not_durable(staged, exc)
            return
        for staged in ready:
            try:
                fd = os.open(staged.tmp, O_READ, dir_fd=staged.dir_fd)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                self._not_durable(staged, exc)

    def _not_durable(self, staged: Staged, exc: OSError) -> None:
        """A staged file whose data could not be flushed: not renamed in (its
        target keeps its old version), a failure for its path."""
        self._changes.fail(
            staged.path, f"cannot flush the received file to disk: {reason(exc)}; not applied"
        )
        staged.entry, staged.failed = None, True

    def _sync_dirs(self) -> None:
        """Make the batch's renames, creations and deletions durable: an
        fsync per directory touched, or one syncfs when there are many (each
        directory fsync is a journal commit of its own)."""
        touched = dict.fromkeys(parent(p) for p in self._changes.touched)
        if len(touched) >= SYNCFS_FROM_FILES:
            try:
                sync_filesystem(self._where.root_fd)
            except OSError as exc:
                self._not_flushed(None, exc)
            return
        for path in touched:
            dir_fd = self.dirs.get(path)
            try:
                if dir_fd is not None:
                    os.fsync(dir_fd)
                    continue
                try:
                    dir_fd = self._where.open_dir(path)
                except OSError:
                    continue  # deleted later in the batch
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError as exc:
                self._not_flushed(path, exc)

    def _not_flushed(self, directory: bytes | None, exc: OSError) -> None:
        """The batch's changes in ``directory`` (``None``: all) were made but
        cannot be made durable: each is a failure, so the sender tries again."""
        why = f"applied, but cannot be flushed to disk: {reason(exc)}"
        for path in dict.fromkeys(self._changes.touched):
            if directory is None or parent(path) == directory:
                self._changes.fail(path, why)
