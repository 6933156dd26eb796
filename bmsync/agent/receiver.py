"""The agent: the passive node's end of a sync session.

``bmsync agent`` speaks the protocol on stdin/stdout (the forced command of
the active node's key). It takes its root, its sync set and its state
directory from its own configuration, never from the sender, and confines
every write to them:

- every path is checked (relative, normalised, no NUL, no ``..``) by the
  frame codec, then against this node's sync set: paths it excludes are
  never written nor deleted, so the node keeps its own identity;
- every directory is walked from the root one component at a time with
  ``O_NOFOLLOW``, so a symlink planted in a parent cannot lead a write
  outside the root;
- file content lands in a temporary file in the target's directory
  (``O_EXCL``, mode 0600), is checked against the sender's digest, gets its
  owner, mode, xattrs and mtime, is fsynced, and is renamed over the target
  when the batch commits; the directory is fsynced after. A reader sees the
  old file or the new one, never a mix.

Directory operations, symlinks, moves and deletes apply as they arrive (they
are atomic one by one); file renames and directory metadata wait for the
batch's ``Commit``, so a batch's files appear together and directory mtimes
are set after their children changed.

Bounds. The sender may be hostile (its key may have leaked): whatever it
sends, what a session holds is bounded, so the agent's peak memory stays
under 100 MiB (README, "How it works"; bench/agent_memory.py measures it):

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
literal inflation          the room left in that result (plus one byte,
                           to refuse it)
staged files (``staged``,  ``MAX_STAGED`` files, and the two bounds below
``dirs``)
a batch's records until    ``MAX_BATCH_RECORDS`` frames that keep
its Commit: ``staged``,    something (20,000) and ``MAX_BATCH_HELD_BYTES``
``expected``,              (24 MiB, counted generously: see ``_held``),
``failures``,              checked before each frame is applied; past
``touched``, ``dir_meta``, either, a ProtocolError ends the session
``backups``                and nothing staged is applied
replies                    ``FLUSH_BYTES`` (1 MiB) wait before they are
                           written; a Fetch goes a chunk at a time
=========================  ==============================================

Bounded by this node's tree, not by what is sent: a ``ManifestRequest``
holds this node's own manifest, about 0.5 KiB per entry of its sync set (its
parts are sent one by one, never all held), and a scan past
``max_entries`` (``sync.max_entries``) stops with TreeTooLarge, however
many files a sender has created.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import secrets
import select
import signal
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from bmsync import __version__
from bmsync.config.parse import Config
from bmsync.config.parse import load as load_config
from bmsync.core.delta import DELTA_MAX_BYTES, Copy, DeltaError, delta_pieces
from bmsync.core.errors import BmsyncError, LocalFsError, PeerRefused, ProtocolError, RoleStateError
from bmsync.core.excludes import SyncSet
from bmsync.core.frames import (
    BASE_MISMATCH,
    PROTOCOL_VERSION,
    Applied,
    Bye,
    Commit,
    ErrorFrame,
    Expect,
    Failure,
    Fetch,
    Frame,
    FrameDecoder,
    Hello,
    ManifestPart,
    ManifestRequest,
    Purpose,
    Put,
    PutAbort,
    PutChunk,
    PutDelta,
    PutHole,
    Refuse,
    Welcome,
    encode,
)
from bmsync.core.manifest import MAX_ENTRIES, Entry, Kind, hash_zeros, manifest_digest, new_hasher
from bmsync.core.ops import Delete, Mkdir, Rename, SetMeta, Symlink
from bmsync.core.paths import basename, join, parent, show
from bmsync.core.roles import Accepted, NodeRole, RefusalCode, Refused, Role, Stamp, judge_sender
from bmsync.fs.digests import DigestCache
from bmsync.fs.files import (
    O_DIR,
    O_READ,
    entry_of,
    hash_fd,
    kind_of,
    open_dir,
    open_file,
    open_root,
    read_xattrs,
    same_version,
    sync_filesystem,
    write_xattrs,
)
from bmsync.fs.scan import TMP_PREFIX, read_file_entry, scan_tree
from bmsync.link.outbox import file_frames
from bmsync.state.directory import ensure_state_dir
from bmsync.state.lock import END_SIGNAL, WAKE_SIGNAL, SenderLock
from bmsync.state.roles import RoleStore

log = structlog.get_logger("bmsync.agent")

# Copies of files changed on this node before bmsync replaced them.
BACKUPS_NAME = "backups"

# Entries per ManifestPart: keeps each frame far below MAX_FRAME_BYTES even
# with large xattrs (the frame encoder still checks).
MANIFEST_PART_BYTES = 1024 * 1024
# From this many files (or directories) in a batch, one syncfs beats an
# fsync per file (or directory).
SYNCFS_FROM_FILES = 16
# A batch may stage this many files; more is a sender bug or an attack on
# the agent's file descriptors and disk.
MAX_STAGED = 20_000
# What a batch keeps until its Commit (see "Bounds" in the module docstring).
# A bmsync sender commits every 1000 operations (session.BATCH_MAX_OPS), each
# with at most an Expect and, per attempt to send a file (3), its first chunk:
# far below either bound. Past one, the sender is broken or hostile: a
# ProtocolError ends the session, and nothing it staged is applied.
MAX_BATCH_RECORDS = MAX_STAGED
MAX_BATCH_HELD_BYTES = 24 * 1024 * 1024
# What one record costs, counted generously (measured with tracemalloc: 130
# to 930 bytes, xxh3 state included): the Python objects around one path (a
# _Staged, an Expect's dict slot, a Failure and its reason, list slots)...
_RECORD_BYTES = 1024
# ...its path, kept up to this many times over (in a Failure's reason too,
# escaped: show() spells a byte that is not UTF-8 in 4 characters)...
_PATH_COPIES = 5
# ...and each extended attribute of an entry kept whole (a tuple of two
# bytes objects: 105 bytes measured), besides its name and value.
_XATTR_BYTES = 128
# Replies sent by `bmsync agent` as soon as this many bytes of them are ready
# (a run of small frames can ask for many manifests or Applied answers).
FLUSH_BYTES = 1024 * 1024
# How long a sender whose stamp supersedes the one writing here waits for
# that session to end (it is told to at once; this covers a slow commit).
PREEMPT_WAIT_S = 10.0
# The frames that change this node's tree: each is judged against this
# node's role as it is when the frame is applied, not at the handshake.
_WRITES = (
    Put,
    PutChunk,
    PutHole,
    PutDelta,
    PutAbort,
    Mkdir,
    Symlink,
    Rename,
    Delete,
    SetMeta,
    Commit,
)


class OpFailed(Exception):
    """One operation could not be applied; the session goes on."""


@dataclass
class _Staged:
    path: bytes
    dir_fd: int  # borrowed from _Batch.dirs; -1 when nothing was staged
    tmp: bytes
    fd: int | None
    size: int = 0
    hasher: Any = field(default_factory=new_hasher)
    entry: Entry | None = None  # set once the content is complete and verified
    failed: bool = False  # the rest of its chunks are read and dropped


@dataclass
class _Batch:
    staged: dict[bytes, _Staged] = field(default_factory=dict)
    # one descriptor per directory holding staged files, shared by its files
    # (a batch of 1000 files must not need 1000 descriptors), closed at commit
    dirs: dict[bytes, int] = field(default_factory=dict)
    dir_meta: list[SetMeta] = field(default_factory=list)
    # paths created, replaced, moved or deleted; their directories are
    # fsynced once each at commit rather than once per operation
    touched: list[bytes] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    # what the sender believes each file is (Expect), and the copies kept of
    # files that turned out to have been changed here
    expected: dict[bytes, bytes] = field(default_factory=dict)
    backups: list[tuple[bytes, str]] = field(default_factory=list)
    backup_dir: Path | None = None
    # what all of the above keep, bounded: see hold()
    records: int = 0
    held_bytes: int = 0

    def hold(self, frame: _Held) -> None:
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


_Held = Expect | PutChunk | Put | PutDelta | Mkdir | Symlink | Rename | Delete | SetMeta
# The frames a batch keeps something of until its commit (a path, an entry).
_HELD = (Expect, PutChunk, Put, PutDelta, Mkdir, Symlink, Rename, Delete, SetMeta)


def _path_of(frame: _Held) -> bytes:
    return frame.dst if isinstance(frame, Rename) else frame.path


def _held(frame: _Held) -> tuple[int, int]:
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


class Agent:
    """Frames in, frames out. ``handle`` never raises for a failed file
    operation (that becomes a ``Failure`` in ``Applied``); it raises
    ``ProtocolError`` for a frame that breaks the protocol."""

    def __init__(
        self,
        node: str,
        root: Path,
        syncset: SyncSet,
        state_dir: Path,
        *,
        local: bool = False,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        """``local``: this node writing into its own tree (the daemon's
        restore from the peer's copies), not a peer: no role rule.
        ``max_entries``: the most entries of its tree it lists for a sender."""
        self.node = node
        self.max_entries = max_entries
        self.root = root
        self.syncset = syncset
        self.state_dir = state_dir
        self._roles = RoleStore(state_dir, node)
        self._local = local
        self._lock = SenderLock(state_dir)
        self._digests = DigestCache(state_dir)
        self._purpose: Purpose | None = None
        # the writer accepted at the handshake, and the role.json it was judged by
        self._sender: Stamp | None = None
        self._role_version: tuple[int, int] | None = None
        # set by `bmsync agent`, which answers WAKE_SIGNAL (see serve)
        self.wakes = False
        self._hold: contextlib.ExitStack | None = None
        self._held = False
        self._batch = _Batch()
        self._root_fd: int | None = None
        self._handlers: dict[type[Any], Callable[[Any], list[Frame] | Iterator[Frame]]] = {
            Hello: self._hello,
            ManifestRequest: self._manifest,
            PutChunk: self._put_chunk,
            PutHole: self._put_hole,
            Put: self._put,
            PutAbort: self._put_abort,
            PutDelta: self._put_delta,
            Expect: self._expect,
            Fetch: self._fetch,
            Mkdir: self._write_op(self._mkdir),
            Symlink: self._write_op(self._symlink),
            Rename: self._write_op(self._rename),
            Delete: self._write_op(self._delete),
            SetMeta: self._write_op(self._setmeta),
            Commit: self._commit,
            Bye: self._bye,
        }
        self.finished = False

    # -- session ---------------------------------------------------------

    def handle(self, frame: Frame) -> list[Frame] | Iterator[Frame]:
        """The answers to ``frame``: a list, or for ``Fetch`` and a manifest
        (read-only, of any size) an iterator to be sent as it comes."""
        handler = self._handlers.get(type(frame))
        if handler is None:
            raise ProtocolError(f"the agent does not accept {type(frame).__name__} frames")
        if self._purpose is None and not isinstance(frame, Hello):
            raise ProtocolError(f"{type(frame).__name__} before Hello")
        if isinstance(frame, _HELD) and not self._local:
            self._batch.hold(frame)  # the daemon's own restore is not bounded here
        if self._sender is None or not isinstance(frame, _WRITES):
            return handler(frame)
        if self._hold is None:
            with self._roles.locked(shared=True):
                return self._recheck() or handler(frame)
        if not self._held:
            self._hold.enter_context(self._roles.locked(shared=True))
            self._held = True
        return self._recheck() or handler(frame)

    @contextlib.contextmanager
    def role_held(self) -> Iterator[None]:
        """Around a run of frames: the first write takes the role lock
        (shared) and keeps it until the run ends, so a promotion waits for
        the frames in hand and no write happens after it."""
        with contextlib.ExitStack() as stack:
            self._hold, self._held = stack, False
            try:
                yield
            finally:
                self._hold, self._held = None, False

    def recheck(self) -> list[Frame]:
        """This node's role may have changed (``WAKE_SIGNAL``): the refusal
        that ends the writing session if its sender may no longer write."""
        if self._sender is None or self.finished:
            return []
        with self._roles.locked(shared=True):
            return self._recheck()

    def _recheck(self) -> list[Frame]:
        """Judge the accepted writer again if role.json changed since it was
        judged: a promotion here, or a higher stamp accepted or reported."""
        assert self._sender is not None
        version = self._roles.version()
        if version == self._role_version:
            return []
        try:
            me = self._roles.load()
        except RoleStateError as exc:
            return self._end_writer(str(exc), RefusalCode.INCOMPATIBLE, None)
        verdict = judge_sender(me, self._sender, Role.ACTIVE)
        if isinstance(verdict, Refused):
            return self._end_writer(verdict.reason, verdict.code, me)
        if self._sender > me.highest_seen:
            # accepting the writer raised highest_seen to its stamp at least:
            # an operator lowered it since (a leaked key's epoch)
            return self._end_writer(
                f"{self.node}'s highest seen epoch was reset to {me.highest_seen}, below "
                f"{self._sender} (bmsync reset-epoch); this session ends, connect again",
                RefusalCode.EPOCH_RESET,
                me,
            )
        self._role_version = version
        return []

    def _end_writer(self, reason: str, code: RefusalCode, me: NodeRole | None) -> list[Frame]:
        """Refuse the writer mid-session: what it staged is dropped, nothing
        more is applied, and it learns this node's role and highest stamp."""
        _drop(self._batch)
        self._batch = _Batch()
        self._sender = None
        log.warning("writer_ended", reason=reason)
        return self._refuse(reason, code, me)

    def close(self) -> None:
        """End of session (clean or not): drop uncommitted staged files."""
        _drop(self._batch)
        self._batch = _Batch()
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None
        self._lock.release()

    def _refuse(self, reason: str, code: RefusalCode, me: NodeRole | None = None) -> list[Frame]:
        log.warning("session_refused", reason=reason, code=str(code))
        self.finished = True
        if me is None:
            try:
                me = self._roles.load()
            except RoleStateError:
                me = NodeRole(self.node)
        return [
            Refuse(
                reason=reason,
                node=self.node,
                role=me.role,
                epoch=me.epoch,
                code=str(code),
                seen_epoch=me.highest_seen.epoch,
                seen_node=me.highest_seen.node,
            )
        ]

    def _judge(self, hello: Hello) -> NodeRole | list[Frame]:
        """The handshake rule for a writer: this node's role afterwards
        (fsynced before the Welcome), or the refusal to send."""
        stamp = Stamp(hello.epoch, hello.node)
        try:
            with self._roles.locked():
                me = self._roles.load()
                verdict = judge_sender(me, stamp, hello.role)
                if isinstance(verdict, Accepted) and verdict.role != me:
                    self._roles.save(verdict.role, f"accepted {hello.node} at epoch {hello.epoch}")
                    log.info("highest_seen", epoch=hello.epoch, node=hello.node)
                self._role_version = self._roles.version()
        except RoleStateError as exc:
            return self._refuse(str(exc), RefusalCode.INCOMPATIBLE)
        if isinstance(verdict, Refused):
            return self._refuse(verdict.reason, verdict.code, me)
        self._sender = stamp
        return verdict.role

    def _supersedes(self, hello: Hello) -> bool:
        """A writer arrives while another holds the lock: if its stamp is
        above every one seen here, record it (the holder is then refused at
        its next write) and say so."""
        stamp = Stamp(hello.epoch, hello.node)
        try:
            with self._roles.locked():
                me = self._roles.load()
                verdict = judge_sender(me, stamp, hello.role)
                if not isinstance(verdict, Accepted) or stamp <= me.highest_seen:
                    return False
                self._roles.save(verdict.role, f"{hello.node} superseded the writer at {stamp}")
        except RoleStateError:
            return False
        log.warning("writer_superseded", by=hello.node, epoch=hello.epoch)
        return True

    def _hello(self, hello: Hello) -> list[Frame]:
        if self._purpose is not None:
            raise ProtocolError("second Hello in one session")
        if hello.version != PROTOCOL_VERSION:
            return self._refuse(
                f"protocol version {hello.version} (bmsync {hello.software}) is not "
                f"{PROTOCOL_VERSION} (bmsync {__version__} on {self.node}); "
                "install the same bmsync version on both nodes",
                RefusalCode.INCOMPATIBLE,
            )
        if hello.node == self.node:
            return self._refuse(
                f"the sender calls itself {hello.node!r}, which is this node's own id; "
                "check peer.host and each node's 'node:'",
                RefusalCode.INCOMPATIBLE,
            )
        if hello.purpose == Purpose.WRITE:
            try:
                judged = self._accept_writer(hello)
            except OSError as exc:
                # the lock and role.json live there: no writer without them
                self._lock.release()
                return self._refuse(
                    f"cannot write this node's state directory {self.state_dir}: "
                    f"{_reason(exc)}; it must be writable (check the filesystem holding it, "
                    "e.g. 'mount' and the kernel log) before this node accepts a sender",
                    RefusalCode.INCOMPATIBLE,
                )
            if isinstance(judged, list):
                self._lock.release()
                return judged
            me = judged
        else:
            try:
                me = self._roles.load()
            except RoleStateError as exc:
                return self._refuse(str(exc), RefusalCode.INCOMPATIBLE)
        try:
            self._root_fd = open_root(self.root)
        except OSError as exc:
            self._lock.release()
            return self._refuse(
                f"cannot open this node's sync root {self.root}: {exc.strerror}",
                RefusalCode.INCOMPATIBLE,
                me,
            )
        self._purpose = hello.purpose
        log.info("session_started", peer=hello.node, purpose=str(hello.purpose))
        return [
            Welcome(
                PROTOCOL_VERSION,
                self.node,
                me.role,
                me.epoch,
                me.highest_seen.epoch,
                me.highest_seen.node,
            )
        ]

    def _accept_writer(self, hello: Hello) -> NodeRole | list[Frame]:
        """Take the sender lock and judge the writer (``_judge``)."""
        holder = f"{hello.node} epoch {hello.epoch}"
        stamp = (hello.epoch, hello.node)
        try:
            self._lock.acquire(holder, self.wakes, stamp)
        except PeerRefused as exc:
            if self._local:
                return self._refuse(str(exc), RefusalCode.BUSY)
            if self._supersedes(hello):
                ended = self._lock.end_session(PREEMPT_WAIT_S)
            elif self._lock.held_by(stamp):
                # the same sender again: its old connection died where this
                # node could not see it (a partition); that session is dead
                ended = self._lock.end_session(PREEMPT_WAIT_S, replace=True)
            else:
                return self._refuse(str(exc), RefusalCode.BUSY)
            log.info("previous_writer", result=ended)
            try:
                self._lock.acquire(holder, self.wakes, stamp)
            except PeerRefused as again:
                return self._refuse(str(again), RefusalCode.BUSY)
        # under the lock: one sender's update of highest_seen at a time
        return self._roles.load() if self._local else self._judge(hello)

    def _bye(self, _: Bye) -> list[Frame]:
        self.finished = True
        return []

    def _manifest(self, request: ManifestRequest) -> list[Frame] | Iterator[Frame]:
        scan = scan_tree(
            self.root,
            self.syncset,
            None if request.fresh else self._digests,
            max_entries=self.max_entries,
        )
        for path, reason in scan.problems:
            log.warning("scan_problem", path=show(path), reason=reason)
        if self._purpose == Purpose.WRITE:
            # We hold the one-sender lock, so these are not another session's.
            self._remove_leftovers(scan.leftovers)
        if request.expect and manifest_digest(scan.entries) == request.expect:
            return [ManifestPart([], last=True, unchanged=True)]
        return _manifest_parts(scan.entries)

    def _remove_leftovers(self, leftovers: list[bytes]) -> None:
        """Temporary files a killed agent left; one that cannot be removed
        (a read-only filesystem) is logged and left for a later session."""
        assert self._root_fd is not None
        for path in leftovers:
            try:
                dir_fd = open_dir(self._root_fd, parent(path))
            except OSError:
                continue
            try:
                removed = _unlink_quietly(dir_fd, basename(path), path)
            finally:
                os.close(dir_fd)
            if removed:
                log.info("leftover_removed", path=show(path))

    # -- confinement -----------------------------------------------------

    def _require_write(self) -> None:
        if self._purpose != Purpose.WRITE:
            raise ProtocolError("this session is read-only (Hello purpose 'read')")

    def _check_covered(self, path: bytes, is_dir: bool) -> None:
        if not self.syncset.covers(path, is_dir):
            raise OpFailed(
                "outside this node's sync set (not under a synced path, or excluded "
                "here); left untouched"
            )

    def _open_parent(self, path: bytes) -> int:
        """The parent directory of ``path``, creating missing directories
        above the sync paths (``usr/share/...``) but nothing inside them."""
        assert self._root_fd is not None
        fd = os.dup(self._root_fd)
        done = b""
        try:
            for part in parent(path).split(b"/") if parent(path) else ():
                done = done + b"/" + part if done else part
                try:
                    child = os.open(part, O_DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not self.syncset.is_implied(done):
                        raise OpFailed(f"parent directory {show(done)} is missing") from None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, O_DIR, dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise OpFailed(
                    f"{show(done)} is a symlink or not a directory; refusing to write through it"
                ) from exc
            raise
        except OpFailed:
            os.close(fd)
            raise
        return fd

    # -- operations ------------------------------------------------------

    def _write_op(self, apply: Callable[[Any], None]) -> Callable[[Any], list[Frame]]:
        def run(op: Any) -> list[Frame]:
            self._require_write()
            path = op.dst if isinstance(op, Rename) else op.path
            try:
                apply(op)
            except (OpFailed, OSError) as exc:
                self._fail(path, _reason(exc))
            return []

        return run

    def _fail(self, path: bytes, reason: str, code: str = "") -> None:
        log.warning("op_failed", path=show(path), reason=reason)
        self._batch.failures.append(Failure(path, reason, code))

    def _mkdir(self, op: Mkdir) -> None:
        if op.entry.kind != Kind.DIR:
            raise ProtocolError(f"Mkdir {show(op.path)} with a {op.entry.kind.name} entry")
        self._check_covered(op.path, True)
        dir_fd = self._open_parent(op.path)
        name = basename(op.path)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=dir_fd)
            fd = os.open(name, O_DIR, dir_fd=dir_fd)
            try:
                _set_meta_fd(fd, op.entry, times=False)
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)
        self._batch.touched.append(op.path)

    def _symlink(self, op: Symlink) -> None:
        if op.entry.kind != Kind.SYMLINK:
            raise ProtocolError(f"Symlink {show(op.path)} with a {op.entry.kind.name} entry")
        self._check_covered(op.path, False)
        dir_fd = self._open_parent(op.path)
        tmp = _tmp_name()
        try:
            os.symlink(op.entry.target, tmp, dir_fd=dir_fd)
            try:
                os.chown(tmp, op.entry.uid, op.entry.gid, dir_fd=dir_fd, follow_symlinks=False)
                os.utime(
                    tmp,
                    ns=(op.entry.mtime_ns, op.entry.mtime_ns),
                    dir_fd=dir_fd,
                    follow_symlinks=False,
                )
                os.rename(tmp, basename(op.path), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                _unlink_quietly(dir_fd, tmp, join(parent(op.path), tmp))
                raise
        finally:
            os.close(dir_fd)
        self._batch.touched.append(op.path)

    def _rename(self, op: Rename) -> None:
        if op.entry.kind != Kind.FILE:
            raise ProtocolError(f"Rename to {show(op.dst)} with a {op.entry.kind.name} entry")
        self._check_covered(op.src, False)
        self._check_covered(op.dst, False)
        src_dir = self._open_parent(op.src)
        try:
            dst_dir = self._open_parent(op.dst)
            try:
                fd = os.open(basename(op.src), O_READ, dir_fd=src_dir)
                copy = None
                try:
                    st = os.fstat(fd)
                    if kind_of(st.st_mode) != Kind.FILE:
                        raise OpFailed(f"move source {show(op.src)} is not a regular file")
                    changed = f"move source {show(op.src)} changed on this node; resend"
                    if st.st_nlink > 1:
                        # its inode has other names (maybe outside the root):
                        # move a copy, leave theirs as it is
                        copy = _copy_with_meta(fd, dst_dir, parent(op.dst), op.entry, changed)
                    else:
                        digest, _ = hash_fd(fd)
                        if digest != op.entry.digest:
                            raise OpFailed(changed)
                        _set_meta_fd(fd, op.entry, times=True)
                finally:
                    os.close(fd)
                if copy is None:
                    os.rename(
                        basename(op.src), basename(op.dst), src_dir_fd=src_dir, dst_dir_fd=dst_dir
                    )
                else:
                    _put_in_place(dst_dir, copy, op.dst)
                    self._batch.touched.extend((op.src, op.dst))
                    os.unlink(basename(op.src), dir_fd=src_dir)
                    return
            finally:
                os.close(dst_dir)
        finally:
            os.close(src_dir)
        self._batch.touched.extend((op.src, op.dst))

    def _delete(self, op: Delete) -> None:
        self._check_covered(op.path, op.kind == Kind.DIR)
        dir_fd = self._open_parent(op.path)
        name = basename(op.path)
        try:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return
            found = kind_of(st.st_mode)
            if found != op.kind:
                raise OpFailed(
                    f"is a {found.name.lower() if found else 'special file'} here, "
                    f"not a {op.kind.name.lower()}; not deleted"
                )
            if op.kind == Kind.FILE:
                self._keep_if_changed_here(self._batch, dir_fd, op.path, "deleted")
            if op.kind == Kind.DIR:
                try:
                    os.rmdir(name, dir_fd=dir_fd)
                except OSError as exc:
                    if exc.errno == errno.ENOTEMPTY:
                        raise OpFailed(
                            "directory not empty: it holds paths this node does not sync; kept"
                        ) from exc
                    raise
            else:
                os.unlink(name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        self._batch.touched.append(op.path)

    def _setmeta(self, op: SetMeta) -> None:
        self._check_covered(op.path, op.entry.kind == Kind.DIR)
        if op.entry.kind == Kind.DIR:
            self._batch.dir_meta.append(op)  # after the batch's children change
            return
        self._apply_meta(op)
        self._batch.touched.append(op.path)

    def _apply_meta(self, op: SetMeta) -> None:
        dir_fd = self._open_parent(op.path)
        name = basename(op.path)
        entry = op.entry
        try:
            if entry.kind == Kind.SYMLINK:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if kind_of(st.st_mode) != Kind.SYMLINK:
                    raise OpFailed("is not a symlink here")
                os.chown(name, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=False)
                os.utime(
                    name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False
                )
            else:
                flags = O_DIR if entry.kind == Kind.DIR else O_READ
                try:
                    fd = os.open(name, flags, dir_fd=dir_fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise OpFailed(f"is not a {entry.kind.name.lower()} here") from exc
                    raise
                copy = None
                try:
                    st = os.fstat(fd)
                    if kind_of(st.st_mode) != entry.kind:
                        raise OpFailed(f"is not a {entry.kind.name.lower()} here")
                    if entry.kind == Kind.FILE and st.st_nlink > 1:
                        # its inode has other names (maybe outside the root):
                        # replace this one by a copy, leave theirs as it is
                        copy = _copy_with_meta(fd, dir_fd, parent(op.path), entry, None)
                    else:
                        _set_meta_fd(fd, entry, times=True)
                finally:
                    os.close(fd)
                if copy is not None:
                    _put_in_place(dir_fd, copy, op.path)
        finally:
            os.close(dir_fd)

    # -- file content ----------------------------------------------------

    def _put_chunk(self, chunk: PutChunk) -> list[Frame]:
        self._require_write()
        self._receive(chunk.path, chunk.offset, chunk.data, None)
        return []

    def _put_hole(self, hole: PutHole) -> list[Frame]:
        self._require_write()
        self._receive(hole.path, hole.offset, b"", None, hole=hole.length)
        return []

    def _put(self, put: Put) -> list[Frame]:
        self._require_write()
        if put.entry.kind != Kind.FILE:
            raise ProtocolError(f"Put {show(put.path)} with a {put.entry.kind.name} entry")
        self._receive(put.path, put.offset, put.data, put.entry)
        return []

    def _put_delta(self, frame: PutDelta) -> list[Frame]:
        """Apply a delta to this node's file, straight into a staged
        temporary file: the base is read and the literals inflated a piece
        at a time, and no more than the declared ``entry.size`` is built
        (the decoder has bounded the operations and that size)."""
        self._require_write()
        if frame.entry.kind != Kind.FILE:
            raise ProtocolError(f"PutDelta {show(frame.path)} with a {frame.entry.kind.name} entry")
        batch = self._batch
        previous = batch.staged.pop(frame.path, None)
        if previous is not None:
            self._discard(previous)
        if len(batch.staged) >= MAX_STAGED:
            raise ProtocolError(f"more than {MAX_STAGED} files in one batch")
        base: tuple[int, os.stat_result] | None = None
        try:
            self._check_covered(frame.path, False)
            base = self._delta_base(frame.path, frame.base)
            if base is None:
                self._base_mismatch(frame.path)
                return []
            if batch.expected.get(frame.path) == frame.base:
                del batch.expected[frame.path]  # just read and verified: no second read
            staged = self._stage(frame.path)
            batch.staged[frame.path] = staged
            if not self._write_delta(staged, base, frame):
                del batch.staged[frame.path]
                self._discard(staged)
                self._base_mismatch(frame.path)
                return []
            self._finish(staged, frame.entry)
        except (DeltaError, OpFailed, OSError) as exc:
            reason = f"bad delta: {exc}" if isinstance(exc, DeltaError) else _reason(exc)
            self._fail(frame.path, reason)
            staged_now = batch.staged.pop(frame.path, None)
            if staged_now is not None:
                self._discard(staged_now)
        finally:
            if base is not None:
                os.close(base[0])
        return []

    def _base_mismatch(self, path: bytes) -> None:
        self._batch.touched.append(path)  # Applied tells what is here instead
        self._fail(
            path,
            "this node's copy is not the version the delta was made against; "
            "the whole file will be sent",
            BASE_MISMATCH,
        )

    def _delta_base(self, path: bytes, digest: bytes) -> tuple[int, os.stat_result] | None:
        """This node's regular file at ``path``, open, if its content has
        ``digest`` (read a piece at a time, never whole); ``None`` if not,
        or if it is too large to be a delta's base."""
        assert self._root_fd is not None
        try:
            fd = open_file(self._root_fd, path)
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
        self, staged: _Staged, base: tuple[int, os.stat_result], frame: PutDelta
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
            _write_all(staged.fd, data)
            staged.size += len(data)
        return same_version(before, os.fstat(base_fd))

    # -- divergence: files changed on this node since bmsync wrote them ----

    def _expect(self, frame: Expect) -> list[Frame]:
        self._require_write()
        self._batch.expected[frame.path] = frame.digest
        return []

    def _keep_if_changed_here(self, batch: _Batch, dir_fd: int, path: bytes, verb: str) -> None:
        """Before ``path`` is ``verb`` (replaced, deleted): if the sender
        expected another version (someone edited it on this node), keep a
        copy under state_dir/backups/<time>/<path>, and report it in
        Applied. OpFailed if the copy cannot be made: then ``path`` must
        not be touched (nothing of the copy is left)."""
        expected = batch.expected.pop(path, None)
        if expected is None:
            return
        try:
            fd = os.open(basename(path), O_READ, dir_fd=dir_fd)
        except OSError:
            return  # nothing here (or a symlink): nothing to lose
        try:
            st = os.fstat(fd)
            if kind_of(st.st_mode) != Kind.FILE:
                return
            digest, _ = hash_fd(fd)
            if digest == expected:
                return
            target = self._backup_path(batch, path)
            try:
                _copy_out(fd, st, target, self.state_dir / BACKUPS_NAME)
            except OSError as exc:
                log.error("backup_failed", path=show(path), kept=str(target), reason=_reason(exc))
                raise OpFailed(
                    f"changed on this node since bmsync wrote it, and the copy to keep before "
                    f"it is {verb} cannot be written to {target}: {_reason(exc)}; not {verb}, "
                    f"this node's version is left as it is. Free space in "
                    f"{self.state_dir / BACKUPS_NAME} (or repair its filesystem); the change "
                    "is sent again"
                ) from exc
        finally:
            os.close(fd)
        batch.backups.append((path, str(target)))
        log.warning(
            "changed_on_this_node",
            path=show(path),
            kept=str(target),
            what="not the version bmsync wrote; a copy is kept before it is replaced",
        )

    def _backup_path(self, batch: _Batch, path: bytes) -> Path:
        if batch.backup_dir is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            batch.backup_dir = self.state_dir / BACKUPS_NAME / stamp
        return batch.backup_dir / os.fsdecode(path)

    def _fetch(self, fetch: Fetch) -> Iterator[Frame]:
        """Send a file back (``bmsync resume --discard`` restores from here),
        a chunk at a time: ``PutChunk``* then ``Put``, or ``PutAbort`` (also
        after some chunks, if it cannot be read to its end)."""
        assert self._root_fd is not None
        try:
            self._check_covered(fetch.path, False)
            yield from file_frames(self._root_fd, fetch.path)
        except (OpFailed, OSError) as exc:
            log.warning("fetch_failed", path=show(fetch.path), reason=_reason(exc))
            yield PutAbort(fetch.path)

    def _put_abort(self, abort: PutAbort) -> list[Frame]:
        self._require_write()
        staged = self._batch.staged.pop(abort.path, None)
        if staged is not None:
            self._discard(staged)
        return []

    def _receive(
        self, path: bytes, offset: int, data: bytes, entry: Entry | None, hole: int = 0
    ) -> None:
        """A piece of a file: ``data`` at ``offset``, or a ``hole`` of that
        many zero bytes, left unwritten (the file stays sparse)."""
        batch = self._batch
        staged = batch.staged.get(path)
        if offset == 0:
            if staged is not None:
                self._discard(staged)
                del batch.staged[path]
            if len(batch.staged) >= MAX_STAGED:
                raise ProtocolError(f"more than {MAX_STAGED} files in one batch")
            try:
                self._check_covered(path, False)
                staged = self._stage(path)
            except (OpFailed, OSError) as exc:
                self._fail(path, _reason(exc))
                staged = _Staged(path, -1, b"", None, failed=True)
            batch.staged[path] = staged
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
            _write_all(staged.fd, data)
            if entry is not None:
                self._finish(staged, entry)
        except (OSError, OpFailed) as exc:
            self._fail(path, _reason(exc))
            self._discard(staged)
            staged.failed = True

    def _stage(self, path: bytes) -> _Staged:
        dirs = self._batch.dirs
        dir_fd = dirs.get(parent(path))
        if dir_fd is None:
            dir_fd = dirs[parent(path)] = self._open_parent(path)
        tmp = _tmp_name()
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
        return _Staged(path, dir_fd, tmp, fd)

    def _finish(self, staged: _Staged, entry: Entry) -> None:
        assert staged.fd is not None
        digest = staged.hasher.digest()
        if staged.size != entry.size or digest != entry.digest:
            raise OpFailed(
                f"received {staged.size} bytes with digest {digest.hex()}, the sender "
                f"announced {entry.size} bytes with {entry.digest.hex()}; not applied"
            )
        os.ftruncate(staged.fd, entry.size)  # a hole at the end has no bytes written
        _set_meta_fd(staged.fd, entry, times=True)
        os.close(staged.fd)  # made durable at commit, before the rename
        staged.fd = None
        staged.entry = entry

    def _discard(self, staged: _Staged) -> None:
        if staged.fd is not None:
            os.close(staged.fd)
            staged.fd = None
        if staged.dir_fd >= 0:
            _unlink_quietly(staged.dir_fd, staged.tmp, _tmp_path(staged))
            staged.dir_fd = -1

    # -- commit ----------------------------------------------------------

    def _commit(self, commit: Commit) -> list[Frame]:
        self._require_write()
        batch, self._batch = self._batch, _Batch()
        self._make_durable(batch)
        placed: dict[bytes, Entry] = {}
        for staged in batch.staged.values():
            if staged.entry is None:
                if not staged.failed:
                    batch.failures.append(
                        Failure(staged.path, "file content incomplete at commit; not applied")
                    )
                self._discard(staged)
                continue
            try:
                self._keep_if_changed_here(batch, staged.dir_fd, staged.path, "replaced")
                os.rename(
                    staged.tmp,
                    basename(staged.path),
                    src_dir_fd=staged.dir_fd,
                    dst_dir_fd=staged.dir_fd,
                )
            except (OSError, OpFailed) as exc:
                batch.failures.append(Failure(staged.path, _reason(exc)))
                self._discard(staged)
                continue
            staged.tmp = b""  # renamed: nothing left to clean up
            batch.touched.append(staged.path)
            # verified content, metadata set from the entry: no need to read it back
            placed[staged.path] = staged.entry
        try:
            self._sync_dirs(batch)
        finally:
            _drop(batch)
        for op in batch.dir_meta:
            try:
                self._apply_meta(op)
                batch.touched.append(op.path)
            except (OpFailed, OSError) as exc:
                batch.failures.append(Failure(op.path, _reason(exc)))
        results = [
            (p, placed[p] if p in placed else self._entry_now(p))
            for p in dict.fromkeys(batch.touched)
        ]
        log.info(
            "batch_applied",
            batch=commit.batch,
            paths=len(results),
            failures=len(batch.failures),
        )
        return [Applied(commit.batch, results, batch.failures, batch.backups)]

    def _make_durable(self, batch: _Batch) -> None:
        """Every staged file's data on disk before any is renamed in: one
        syncfs for a large batch (an initial sync of 100,000 files must not
        cost 100,000 fsyncs), one fsync per file for a small one (a busy
        filesystem is not flushed for one edit)."""
        ready = [s for s in batch.staged.values() if s.entry is not None]
        if not ready:
            return
        if len(ready) >= SYNCFS_FROM_FILES:
            try:
                sync_filesystem(ready[0].dir_fd)
            except OSError as exc:
                for staged in ready:
                    _not_durable(batch, staged, exc)
            return
        for staged in ready:
            try:
                fd = os.open(staged.tmp, O_READ, dir_fd=staged.dir_fd)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                _not_durable(batch, staged, exc)

    def _sync_dirs(self, batch: _Batch) -> None:
        """Make the batch's renames, creations and deletions durable: an
        fsync per directory touched, or one syncfs when there are many (each
        directory fsync is a journal commit of its own)."""
        assert self._root_fd is not None
        touched = dict.fromkeys(parent(p) for p in batch.touched)
        if len(touched) >= SYNCFS_FROM_FILES:
            try:
                sync_filesystem(self._root_fd)
            except OSError as exc:
                _not_flushed(batch, None, exc)
            return
        for path in touched:
            dir_fd = batch.dirs.get(path)
            try:
                if dir_fd is not None:
                    os.fsync(dir_fd)
                    continue
                try:
                    dir_fd = open_dir(self._root_fd, path)
                except OSError:
                    continue  # deleted later in the batch
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError as exc:
                _not_flushed(batch, path, exc)

    def _entry_now(self, path: bytes) -> Entry | None:
        """What ``path`` holds now, or ``None`` (absent, unreadable)."""
        assert self._root_fd is not None
        try:
            dir_fd = open_dir(self._root_fd, parent(path))
        except OSError:
            return None
        name = basename(path)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            kind = kind_of(st.st_mode)
            if kind == Kind.FILE:
                return read_file_entry(dir_fd, name)
            if kind == Kind.SYMLINK:
                return entry_of(st, kind, target=os.readlink(name, dir_fd=dir_fd))
            if kind == Kind.DIR:
                fd = os.open(name, O_DIR, dir_fd=dir_fd)
                try:
                    return entry_of(os.fstat(fd), kind, xattrs=read_xattrs(fd))
                finally:
                    os.close(fd)
            return None
        except OSError:
            return None
        finally:
            os.close(dir_fd)


def _drop(batch: _Batch) -> None:
    """Remove a batch's uncommitted temporary files, close its directories."""
    for staged in batch.staged.values():
        if staged.fd is not None:
            os.close(staged.fd)
            staged.fd = None
        if staged.dir_fd >= 0 and staged.tmp:
            _unlink_quietly(staged.dir_fd, staged.tmp, _tmp_path(staged))
    for dir_fd in batch.dirs.values():
        os.close(dir_fd)
    batch.staged.clear()
    batch.dirs.clear()


def _copy_out(src: int, st: os.stat_result, target: Path, top: Path) -> None:
    """Copy the open file ``src`` (``st``: its stat) to ``target``, with
    its owner, mode and times, fsynced. On failure, nothing is left of the
    copy (neither the partial file nor the directories made for it)."""
    made = [d for d in (target.parent, *target.parent.parents) if d.is_relative_to(top)]
    made = [d for d in made if not d.exists()]
    out: int | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.lseek(src, 0, os.SEEK_SET)
        while chunk := os.read(src, 1 << 20):
            _write_all(out, chunk)
        os.fchown(out, st.st_uid, st.st_gid)
        os.fchmod(out, stat.S_IMODE(st.st_mode))
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.fsync(out)
    except OSError:
        if out is not None:  # ours (O_EXCL): never someone else's file
            os.close(out)
            out = None
            with contextlib.suppress(OSError):
                os.unlink(target)
        for directory in made:  # deepest first; one holding other copies stays
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise
    finally:
        if out is not None:
            os.close(out)


def _copy_with_meta(
    src: int, dir_fd: int, where: bytes, entry: Entry, changed: str | None
) -> bytes:
    """A new temporary file in ``dir_fd`` (directory ``where``): a copy of
    ``src`` with ``entry``'s owner, mode, xattrs and mtime, fsynced; its
    name. For a file whose inode has other names (hard links, perhaps to a
    file outside the root), which metadata set in place would change too.
    ``changed``: the content must have ``entry``'s digest, or OpFailed with
    this reason."""
    tmp = _tmp_name()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    try:
        hasher = new_hasher()
        os.lseek(src, 0, os.SEEK_SET)
        while chunk := os.read(src, 1 << 20):
            hasher.update(chunk)
            _write_all(out, chunk)
        if changed is not None and hasher.digest() != entry.digest:
            raise OpFailed(changed)
        _set_meta_fd(out, entry, times=True)
        os.fsync(out)
    except BaseException:
        os.close(out)
        _unlink_quietly(dir_fd, tmp, join(where, tmp))
        raise
    os.close(out)
    return tmp


def _put_in_place(dir_fd: int, tmp: bytes, path: bytes) -> None:
    """Rename the temporary file ``tmp`` over ``path`` (in ``dir_fd``)."""
    try:
        os.rename(tmp, basename(path), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_quietly(dir_fd, tmp, join(parent(path), tmp))
        raise


def _not_durable(batch: _Batch, staged: _Staged, exc: OSError) -> None:
    """A staged file whose data could not be flushed: not renamed in (its
    target keeps its old version), a failure for its path."""
    reason = f"cannot flush the received file to disk: {_reason(exc)}; not applied"
    log.warning("op_failed", path=show(staged.path), reason=reason)
    batch.failures.append(Failure(staged.path, reason))
    staged.entry, staged.failed = None, True


def _not_flushed(batch: _Batch, directory: bytes | None, exc: OSError) -> None:
    """The batch's changes in ``directory`` (``None``: all) were made but
    cannot be made durable: each is a failure, so the sender tries again."""
    reason = f"applied, but cannot be flushed to disk: {_reason(exc)}"
    for path in dict.fromkeys(batch.touched):
        if directory is None or parent(path) == directory:
            log.warning("op_failed", path=show(path), reason=reason)
            batch.failures.append(Failure(path, reason))


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _tmp_name() -> bytes:
    return TMP_PREFIX + secrets.token_hex(8).encode()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unlink_quietly(dir_fd: int, name: bytes, shown: bytes) -> bool:
    """Remove a temporary file of ours (``shown``: its path, for the log).
    One that cannot be removed (a read-only or failing filesystem) is
    logged and left: the next writing session removes it (``.bmsync-tmp.*``
    is never part of a manifest). False when it is still there."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning(
            "temp_file_left",
            path=show(shown),
            reason=_reason(exc),
            what="cannot be removed; the next writing session removes it",
        )
        return False
    return True


def _tmp_path(staged: _Staged) -> bytes:
    """Where a staged file's temporary file is, below the root."""
    return join(parent(staged.path), staged.tmp)


def _set_meta_fd(fd: int, entry: Entry, times: bool) -> None:
    """Owner before mode (chown clears set-id bits), ACL xattrs after mode
    (chmod rewrites the ACL mask), mtime last (everything else touches ctime
    only, but keep the order obvious)."""
    os.fchown(fd, entry.uid, entry.gid)
    os.fchmod(fd, entry.mode)
    try:
        write_xattrs(fd, entry.xattrs)
    except OSError as exc:
        raise OpFailed(f"cannot set extended attributes: {exc.strerror}") from exc
    if times:
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))


# -- running over a byte stream ---------------------------------------------


class AgentConnection:
    """Bytes in, bytes out, for any transport: ``receive_data`` returns what
    to send back, or with ``send``, sends it as it is made. A protocol error
    becomes an ErrorFrame and ends the session (``finished``); nothing of the
    offending frame was applied."""

    def __init__(self, agent: Agent, send: Callable[[bytes], None] | None = None) -> None:
        """``send``: write replies once ``FLUSH_BYTES`` of them are ready
        (and a ``Fetch``, chunk by chunk), never while holding the role lock,
        so what waits to be sent stays small whatever the sender asks for."""
        self.agent = agent
        self._decoder = FrameDecoder(to_agent=True)
        self._send = send
        self.exit_code = 0

    @property
    def finished(self) -> bool:
        return self.agent.finished

    def receive_data(self, data: bytes) -> bytes:
        out: list[bytes] = []
        try:
            if not data:
                if self._decoder.pending:
                    raise ProtocolError(
                        f"input ended inside a frame ({self._decoder.pending} bytes)"
                    )
                self.agent.finished = True
                return b""
            self._decoder.feed(data)
            while self._handle_some(out):
                self._flush(out)
        except BmsyncError as exc:
            # a broken frame, or this node's tree unreadable: tell the sender
            self._fail_session(str(exc), exc.exit_code)
            out.append(encode(ErrorFrame(str(exc))))
        except OSError as exc:
            # not one path's failure (those are Failures in Applied): this
            # node's state_dir failing mid-session, say; tell the sender why
            message = (
                f"{self.agent.node}: the agent failed on its own filesystem "
                f"({exc.filename!r}: {_reason(exc)}); check the filesystems holding "
                f"{self.agent.state_dir} and {self.agent.root} on {self.agent.node}"
            )
            self._fail_session(message, LocalFsError.exit_code)
            out.append(encode(ErrorFrame(message)))
        return self._flush(out)

    def _handle_some(self, out: list[bytes]) -> bool:
        """Handle the frames received, under the role lock, until none is
        left (False) or, when replies are sent as they come, until
        ``FLUSH_BYTES`` of them wait or a Fetch is to be streamed (True)."""
        stream: Iterator[Frame] | None = None
        size = sum(len(b) for b in out)
        with self.agent.role_held():
            while not self.agent.finished and (frame := self._decoder.next_frame()):
                replies = self.agent.handle(frame)
                if self._send is not None and not isinstance(replies, list):
                    stream = replies
                    break
                for reply in replies:
                    out.append(encode(reply))
                    size += len(out[-1])
                if self._send is not None and size >= FLUSH_BYTES:
                    return True
            else:
                return False
        assert stream is not None
        for reply in stream:  # read-only (a file, a manifest): never under the role lock
            out.append(encode(reply))
            self._flush(out)
        return True

    def _flush(self, out: list[bytes]) -> bytes:
        """With ``send``: send ``out`` and return nothing; else return it."""
        data = b"".join(out)
        out.clear()
        if self._send is None:
            return data
        if data:
            self._send(data)
        return b""

    def _fail_session(self, error: str, exit_code: int) -> None:
        log.error("session_failed", error=error)
        self.agent.finished = True
        self.exit_code = exit_code

    def wake(self) -> bytes:
        """This node's role may have changed: the refusal ending the writing
        session, if its sender may no longer write."""
        return b"".join(encode(frame) for frame in self.agent.recheck())


def _manifest_parts(entries: dict[bytes, Entry]) -> Iterator[ManifestPart]:
    """The manifest a part at a time: each is encoded and sent before the
    next is made, so only the scan itself is held, never a copy in frames."""
    chunk: list[tuple[bytes, Entry]] = []
    size = 0
    for path, entry in entries.items():
        chunk.append((path, entry))
        size += len(path) + len(entry.target) + 64 + sum(len(k) + len(v) for k, v in entry.xattrs)
        if size >= MANIFEST_PART_BYTES:
            yield ManifestPart(chunk, last=False)
            chunk, size = [], 0
    yield ManifestPart(chunk, last=True)


def serve(agent: Agent, read: Callable[[], bytes | None], write: Callable[[bytes], None]) -> int:
    """Run a session over blocking ``read``/``write`` (``read`` returns b""
    at end of input, ``None`` when woken by ``WAKE_SIGNAL``); returns the
    process exit code. Replies are written as they are made."""
    connection = AgentConnection(agent, write)
    try:
        while not connection.finished:
            data = read()
            reply = connection.wake() if data is None else connection.receive_data(data)
            if reply:
                write(reply)
        return connection.exit_code
    finally:
        agent.close()


def make_agent(config: Config) -> Agent:
    """An agent from this node's own configuration."""
    ensure_state_dir(config.state_dir)
    return Agent(
        config.node,
        config.sync.root,
        config.syncset(),
        config.state_dir,
        max_entries=config.sync.max_entries,
    )


def run_stdio(config_path: Path) -> int:
    """``bmsync agent``: a session on stdin/stdout. A configuration error is
    sent to the sender as an ErrorFrame (and printed on stderr), so the
    active node's operator sees why the agent could not start."""
    # A batch holds a descriptor per directory it writes to; sshd sessions
    # often start with a soft limit of 1024, far below the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        agent = make_agent(load_config(config_path, receiver=True))
    except BmsyncError as exc:
        log.error("agent_cannot_start", error=str(exc))
        _write_all(1, encode(ErrorFrame(str(exc))))
        return exc.exit_code

    # `bmsync promote` (or a superseding sender) sends WAKE_SIGNAL to the
    # agent holding the sender lock: it checks the role at once instead of
    # at the sender's next write, so the session ends before promote returns.
    # END_SIGNAL (the same sender connected again) ends it between frames.
    woken, wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    ended: list[int] = []
    signal.signal(WAKE_SIGNAL, lambda signum, frame: None)
    signal.signal(END_SIGNAL, lambda signum, frame: ended.append(signum))
    signal.set_wakeup_fd(wake, warn_on_full_buffer=False)
    agent.wakes = True

    def read() -> bytes | None:
        ready, _, _ = select.select([0, woken], [], [])
        if ended:
            raise SessionReplaced
        if woken in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(woken, 512)
            return None
        return os.read(0, 1024 * 1024)

    def write(data: bytes) -> None:
        _write_all(1, data)

    try:
        return serve(agent, read, write)
    except SessionReplaced:
        log.warning("session_replaced", why="the same sender connected again")
        return 0


class SessionReplaced(Exception):
    """The sender of this session connected again: this one is dead."""
