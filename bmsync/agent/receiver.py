"""The agent: the passive node's end of a sync session.

``bmsync agent`` (``agent/stdio.py``) feeds it the sender's frames. It takes
its root, its sync set and its state directory from its own configuration,
never from the sender. This module is the session: the handshake (who may
write here, judged against this node's role), then which frame is allowed
in which state of the session, in one table, and every write judged again
against the role as it is when the write is applied, so a promotion here
ends the writer before its next write.

What the writes do is elsewhere: ``fs/tree_writer.py`` applies a batch
inside the root (confined to the sync set, staged, committed atomically),
``agent/backups.py`` keeps files changed here before they are replaced, and
``agent/bounds.py`` bounds what a session holds, whatever it is sent.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from bmsync import __version__
from bmsync.agent import reads
from bmsync.agent.admission import Admission, Rejection
from bmsync.agent.backups import Backups
from bmsync.agent.bounds import HELD, BatchBounds
from bmsync.core.errors import HaRefused, ProtocolError, RoleStateError
from bmsync.core.excludes import SyncSet
from bmsync.core.frames import (
    PROTOCOL_VERSION,
    Bye,
    Commit,
    Expect,
    Fetch,
    Frame,
    Hello,
    ManifestRequest,
    Purpose,
    Put,
    PutAbort,
    PutChunk,
    PutDelta,
    PutHole,
    Refuse,
    Welcome,
)
from bmsync.core.ha_frames import REMOTE_ACTIONS, HaAnswer, HaRequest, MountsRequest
from bmsync.core.manifest import MAX_ENTRIES
from bmsync.core.ops import Delete, Mkdir, Rename, SetMeta, Symlink
from bmsync.core.roles import NodeRole, RefusalCode
from bmsync.fs.confine import Confined, reason
from bmsync.fs.digests import DigestCache
from bmsync.fs.mounts import MOUNTINFO
from bmsync.fs.tree_writer import TreeWriter
from bmsync.state.lock import SenderLock
from bmsync.state.operation import OperationLock
from bmsync.state.roles import RoleStore

log = structlog.get_logger("bmsync.agent")

Handler = Callable[[Any], list[Frame] | Iterator[Frame]]
HaStep = Callable[[HaRequest], HaAnswer]


class State(enum.Enum):
    NEW = "new"  # before Hello (or after a Hello refused)
    READING = "reading"  # Hello purpose 'read': manifests and files out
    WRITING = "writing"  # Hello purpose 'write', the writer accepted
    HA = "ha"  # Hello purpose 'ha': an HA operation's steps for this node
    ENDED = "ended"  # the writer refused mid-session: nothing more is taken


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
        max_entries: int = MAX_ENTRIES,
        mountinfo: Path = MOUNTINFO,
        ha: HaStep | None = None,
    ) -> None:
        """``max_entries``: the most entries of its tree it lists for a
        sender; ``mountinfo``: where this node's mounts are read; ``ha``:
        runs an HA operation's step here (None: this agent runs none)."""
        self.node = node
        self._ha = ha
        self._operation = OperationLock(state_dir)
        self.mountinfo = mountinfo
        self.max_entries = max_entries
        self.root = root
        self.syncset = syncset
        self.state_dir = state_dir
        self._roles = RoleStore(state_dir, node)
        self._lock = SenderLock(state_dir)
        self._digests = DigestCache(state_dir)
        self._state = State.NEW
        self._admission = Admission(node, self._roles, self._lock)
        # set by `bmsync agent`, which answers WAKE_SIGNAL (see stdio.serve)
        self.wakes = False
        self._hold: contextlib.ExitStack | None = None
        self._held = False
        self._where: Confined | None = None  # the root, open from the Hello on
        self._writer: TreeWriter | None = None  # the batch being written
        self._backups = Backups(state_dir)
        self._bounds = BatchBounds()
        self.finished = False
        reading: dict[type[Any], Handler] = {
            ManifestRequest: self._manifest,
            MountsRequest: self._mounts,
            Fetch: self._fetch,
            Bye: self._bye,
            Hello: self._second_hello,
        }
        # the frames that change this node's tree: each is judged against
        # this node's role as it is when the frame is applied
        changes: dict[type[Any], Handler] = {
            PutChunk: self._file_frame,
            PutHole: self._file_frame,
            Put: self._file_frame,
            PutAbort: self._file_frame,
            PutDelta: self._file_frame,
            Mkdir: self._op,
            Symlink: self._op,
            Rename: self._op,
            Delete: self._op,
            SetMeta: self._op,
            Commit: self._commit,
        }
        writes: dict[type[Any], Handler] = {
            Expect: self._expect,  # the role is judged when the file is replaced
            **{kind: self._as_writer(handler) for kind, handler in changes.items()},
        }
        # Which frame each state of the session takes, and what it does.
        self._table: dict[State, dict[type[Any], Handler]] = {
            State.NEW: {Hello: self._hello},
            State.READING: {**reading, **dict.fromkeys(writes, self._read_only)},
            State.WRITING: {**reading, **writes},
            State.HA: {HaRequest: self._ha_step, Bye: self._bye, Hello: self._second_hello},
            State.ENDED: {},
        }

    # -- session ---------------------------------------------------------

    def handle(self, frame: Frame) -> list[Frame] | Iterator[Frame]:
        """The answers to ``frame``: a list, or for ``Fetch`` and a manifest
        (read-only, of any size) an iterator to be sent as it comes."""
        handler = self._table[self._state].get(type(frame))
        if handler is None:
            name = type(frame).__name__
            if not any(type(frame) in table for table in self._table.values()):
                raise ProtocolError(f"the agent does not accept {name} frames")
            if self._state is State.NEW:
                raise ProtocolError(f"{name} before Hello")
            if self._state is State.HA:
                raise ProtocolError(f"{name} in an HA session, which takes HaRequest and Bye only")
            if isinstance(frame, HaRequest):
                raise ProtocolError(f"{name} outside an HA session (a Hello of purpose 'ha')")
            raise ProtocolError(f"{name} after this node ended the writing session")
        if self._state is State.WRITING and isinstance(frame, HELD):
            self._bounds.hold(frame)
        return handler(frame)

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

    def _as_writer(self, handler: Handler) -> Handler:
        """``handler`` for a frame that changes this node's tree: judged
        against this node's role as it is now, under the role lock."""

        def run(frame: Any) -> list[Frame] | Iterator[Frame]:
            if self._hold is None:
                with self._roles.locked(shared=True):
                    return self._recheck() or handler(frame)
            if not self._held:
                self._hold.enter_context(self._roles.locked(shared=True))
                self._held = True
            return self._recheck() or handler(frame)

        return run

    def recheck(self) -> list[Frame]:
        """This node's role may have changed (``WAKE_SIGNAL``): the refusal
        that ends the writing session if its sender may no longer write."""
        if self._state is not State.WRITING or self.finished:
            return []
        with self._roles.locked(shared=True):
            return self._recheck()

    def _recheck(self) -> list[Frame]:
        """The refusal ending the writer, if it may no longer write."""
        refusal = self._admission.recheck()
        return [] if refusal is None else self._end_writer(refusal)

    def _end_writer(self, refusal: Rejection) -> list[Frame]:
        """Refuse the writer mid-session: what it staged is dropped, nothing
        more is applied, and it learns this node's role and highest stamp."""
        self._state = State.ENDED
        self._drop_batch()
        log.warning("writer_ended", reason=refusal.reason)
        return self._refuse(refusal.reason, refusal.code, refusal.me)

    def _drop_batch(self) -> None:
        """Forget the batch in hand (its staged files are removed)."""
        if self._writer is not None:
            self._writer.drop()
            self._writer = None

    def _new_batch(self) -> None:
        """The next batch of a writing session: nothing staged, expected,
        kept or counted yet."""
        assert self._where is not None
        self._backups = Backups(self.state_dir)
        self._bounds = BatchBounds()
        self._writer = TreeWriter(self._where, self._backups)

    def close(self) -> None:
        """End of session (clean or not): drop uncommitted staged files."""
        self._drop_batch()
        if self._where is not None:
            self._where.close()
            self._where = None
        self._operation.release()
        self._lock.release()  # last: whoever waits for the session's end goes on

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

    def _bye(self, _: Bye) -> list[Frame]:
        self.finished = True
        return []

    # -- handshake -------------------------------------------------------

    def _hello(self, hello: Hello) -> list[Frame]:
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
        if hello.purpose == Purpose.HA:
            refused = self._take_operation(hello)
            if refused:
                return refused
        if hello.purpose == Purpose.WRITE:
            try:
                judged = self._admission.admit(hello, self.wakes)
            except OSError as exc:
                # the lock and role.json live there: no writer without them
                self._lock.release()
                return self._refuse(
                    f"cannot write this node's state directory {self.state_dir}: "
                    f"{reason(exc)}; it must be writable (check the filesystem holding it, "
                    "e.g. 'mount' and the kernel log) before this node accepts a sender",
                    RefusalCode.INCOMPATIBLE,
                )
            if isinstance(judged, Rejection):
                self._lock.release()
                return self._refuse(judged.reason, judged.code, judged.me)
            me = judged
        else:
            try:
                me = self._roles.load()
            except RoleStateError as exc:
                return self._refuse(str(exc), RefusalCode.INCOMPATIBLE)
        try:
            self._where = Confined(self.root, self.syncset)
        except OSError as exc:
            self._lock.release()
            return self._refuse(
                f"cannot open this node's sync root {self.root}: {exc.strerror}",
                RefusalCode.INCOMPATIBLE,
                me,
            )
        if hello.purpose == Purpose.WRITE:
            self._state = State.WRITING
            self._new_batch()
        elif hello.purpose == Purpose.HA:
            self._state = State.HA
        else:
            self._state = State.READING
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

    def _take_operation(self, hello: Hello) -> list[Frame]:
        """An HA session holds this node's operation lock: the refusal if
        it cannot run HA steps or another operation runs here."""
        if self._ha is None:
            return self._refuse(f"{self.node}'s agent runs no HA steps", RefusalCode.INCOMPATIBLE)
        try:
            self._operation.acquire(f"steps asked by {hello.node}")
        except HaRefused as exc:
            return self._refuse(str(exc), RefusalCode.BUSY)
        return []

    def _ha_step(self, request: HaRequest) -> list[Frame]:
        assert self._ha is not None
        if request.action not in REMOTE_ACTIONS:
            raise ProtocolError(f"{request.action} is not a step a peer may ask of this node")
        return [self._ha(request)]

    def _second_hello(self, _: Hello) -> list[Frame]:
        raise ProtocolError("second Hello in one session")

    # -- reads -----------------------------------------------------------

    def _manifest(self, request: ManifestRequest) -> list[Frame] | Iterator[Frame]:
        assert self._where is not None
        writing = self._state is State.WRITING
        return reads.manifest(request, self._where, self._digests, self.max_entries, writing)

    def _mounts(self, request: MountsRequest) -> list[Frame]:
        return reads.mounts(request, self.mountinfo)

    def _fetch(self, frame: Fetch) -> Iterator[Frame]:
        assert self._where is not None
        return reads.fetch(self._where, frame.path)

    # -- writes ----------------------------------------------------------

    def _read_only(self, _: Frame) -> list[Frame]:
        raise ProtocolError("this session is read-only (Hello purpose 'read')")

    def _expect(self, frame: Expect) -> list[Frame]:
        self._backups.expect(frame.path, frame.digest)
        return []

    def _op(self, op: Mkdir | Symlink | Rename | Delete | SetMeta) -> list[Frame]:
        assert self._writer is not None
        self._writer.apply(op)
        return []

    def _file_frame(self, frame: PutChunk | PutHole | Put | PutAbort | PutDelta) -> list[Frame]:
        assert self._writer is not None
        self._writer.receive(frame)
        return []

    def _commit(self, commit: Commit) -> list[Frame]:
        writer = self._writer
        assert writer is not None
        self._new_batch()
        return [writer.commit(commit.batch)]
