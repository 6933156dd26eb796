"""Who may write here: a writer judged at the handshake against this node's
role, and judged again whenever that role changes.

A sender writes only while this node is passive and the sender's stamp
(epoch, node) is the highest this node has seen; the rule itself is
``core.guard.judge_sender``. Accepting a writer records its stamp in
role.json (fsynced before the Welcome), under the one-sender lock, so two
senders never both believe they may write. A sender with a higher stamp
supersedes the one writing (which is refused at its next write); the same
sender connecting again ends its own dead session.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from bmsync.core.errors import PeerRefused, RoleStateError
from bmsync.core.frames import Hello
from bmsync.core.roles import Accepted, NodeRole, RefusalCode, Refused, Role, Stamp, judge_sender
from bmsync.state.lock import SenderLock
from bmsync.state.roles import RoleStore

log = structlog.get_logger("bmsync.agent")

# How long a sender whose stamp supersedes the one writing here waits for
# that session to end (it is told to at once; this covers a slow commit).
PREEMPT_WAIT_S = 10.0


@dataclass(frozen=True)
class Rejection:
    """Why a writer may not write (``me``: this node's role, if known)."""

    reason: str
    code: RefusalCode
    me: NodeRole | None = None


class Admission:
    """The writer of one session: taken in by ``admit``, checked again by
    ``recheck`` before each of its writes."""

    def __init__(self, node: str, roles: RoleStore, lock: SenderLock) -> None:
        self._node = node
        self._roles = roles
        self._lock = lock
        # the writer accepted at the handshake, and the role.json it was judged by
        self.sender: Stamp | None = None
        self._role_version: tuple[int, int] | None = None

    def admit(self, hello: Hello, wakes: bool) -> NodeRole | Rejection:
        """Take the sender lock and judge the writer: this node's role
        afterwards, or why not (the lock is then still held: the caller
        releases it). OSError if the state directory fails.
        ``wakes``: this session answers WAKE_SIGNAL and END_SIGNAL."""
        holder = f"{hello.node} epoch {hello.epoch}"
        stamp = (hello.epoch, hello.node)
        try:
            self._lock.acquire(holder, wakes, stamp)
        except PeerRefused as exc:
            if self._supersedes(hello):
                ended = self._lock.end_session(PREEMPT_WAIT_S)
            elif self._lock.held_by(stamp):
                # the same sender again: its old connection died where this
                # node could not see it (a partition); that session is dead
                ended = self._lock.end_session(PREEMPT_WAIT_S, replace=True)
            else:
                return Rejection(str(exc), RefusalCode.BUSY)
            log.info("previous_writer", result=ended)
            try:
                self._lock.acquire(holder, wakes, stamp)
            except PeerRefused as again:
                return Rejection(str(again), RefusalCode.BUSY)
        # under the lock: one sender's update of highest_seen at a time
        return self._judge(hello)

    def _judge(self, hello: Hello) -> NodeRole | Rejection:
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
            return Rejection(str(exc), RefusalCode.INCOMPATIBLE)
        if isinstance(verdict, Refused):
            return Rejection(verdict.reason, verdict.code, me)
        self.sender = stamp
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

    def recheck(self) -> Rejection | None:
        """Judge the accepted writer again if role.json changed since it was
        judged: a promotion here, or a higher stamp accepted or reported.
        The caller holds the role lock (shared)."""
        assert self.sender is not None
        version = self._roles.version()
        if version == self._role_version:
            return None
        try:
            me = self._roles.load()
        except RoleStateError as exc:
            return Rejection(str(exc), RefusalCode.INCOMPATIBLE)
        verdict = judge_sender(me, self.sender, Role.ACTIVE)
        if isinstance(verdict, Refused):
            return Rejection(verdict.reason, verdict.code, me)
        if self.sender > me.highest_seen:
            # accepting the writer raised highest_seen to its stamp at least:
            # an operator lowered it since (a leaked key's epoch)
            return Rejection(
                f"{self._node}'s highest seen epoch was reset to {me.highest_seen}, below "
                f"{self.sender} (bmsync reset-epoch); this session ends, connect again",
                RefusalCode.EPOCH_RESET,
                me,
            )
        self._role_version = version
        return None
