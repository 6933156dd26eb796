"""This node's role and epochs (``role.json``), and the lock that orders a
role change with the agent's writes."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import structlog

from bmsync.core.errors import NotActive, RoleStateError
from bmsync.core.roles import MAX_EPOCH, NodeRole, Refusal, Role, Stamp
from bmsync.fs.atomic import write_atomic

log = structlog.get_logger("bmsync.state")

# Taken shared by the agent while it writes, exclusive by whatever changes
# role.json: a promotion is ordered with every write, never in the middle
# of one.
ROLE_LOCK_NAME = "role.lock"


ROLE_NAME = "role.json"


class _Seen(msgspec.Struct, frozen=True):
    epoch: int
    node: str


class _RoleFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    node: str
    role: Role
    epoch: int
    highest_seen: _Seen
    forced: str | None = None  # the last `resume --force` reason, with its time
    changed: str = ""  # when, and by what


class RoleStore:
    """``state_dir/role.json``: role, epoch and highest (epoch, node) seen,
    replaced atomically and fsynced. A node without one is passive at
    epoch 0; a damaged one is an error, never a reset (a reset
    ``highest_seen`` would let a superseded active write again)."""

    def __init__(self, state_dir: Path, node: str) -> None:
        self.path = state_dir / ROLE_NAME
        self._lock_path = state_dir / ROLE_LOCK_NAME
        self._node = node

    def load(self) -> NodeRole:
        return self.load_record()[0]

    @contextlib.contextmanager
    def locked(self, shared: bool = False) -> Iterator[None]:
        """Hold ``role.lock``: exclusive to change the role, shared to
        write to this node's tree under the role read inside."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def update(
        self, change: Callable[[NodeRole], NodeRole], changed: str, lenient: bool = False
    ) -> NodeRole:
        """Read, change and write the role under the lock (the agent raising
        ``highest_seen`` and an operator promoting never lose each other's
        write); returns the role now on disk. ``lenient``: see
        ``load_record`` (demote and reset-epoch repair such a file)."""
        with self.locked():
            before = self.load_record(lenient)[0]
            after = change(before)
            if after != before:
                self.save(after, changed)
            return after

    def learn(self, refusal: Refusal) -> NodeRole:
        """Record what a peer's refusal taught this node (``NodeRole.learn``);
        returns the role now on disk."""
        return self.update(
            lambda role: role.learn(refusal),
            f"refused by {refusal.peer}, which has seen {refusal.seen}",
        )

    def version(self) -> tuple[int, int] | None:
        """Changes whenever role.json is replaced (inode, mtime); ``None``
        when there is none."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def load_record(self, lenient: bool = False) -> tuple[NodeRole, _RoleFile | None]:
        """The role, and the file's record. An epoch out of range (written
        by a bmsync that did not check epochs, from a hostile sender's) is
        an error unless ``lenient``."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return NodeRole(self._node), None
        except OSError as exc:
            raise RoleStateError(f"{self.path}: cannot read it ({exc.strerror})") from exc
        try:
            record = msgspec.json.decode(data, type=_RoleFile)
        except (msgspec.MsgspecError, ValueError) as exc:
            raise RoleStateError(
                f"{self.path} is damaged ({exc}); restore it from a backup, or write it by "
                "hand from the peer's 'bmsync status --json' (role, epoch, highest seen)"
            ) from exc
        if record.node != self._node:
            raise RoleStateError(
                f"{self.path} belongs to node {record.node!r}, but this node is "
                f"{self._node!r}; check 'node:' in the configuration"
            )
        seen = Stamp(record.highest_seen.epoch, record.highest_seen.node)
        for what, epoch in (("epoch", record.epoch), ("highest_seen epoch", seen.epoch)):
            if not lenient and not 0 <= epoch <= MAX_EPOCH:
                raise RoleStateError(
                    f"{self.path}: {what} {epoch} is out of range (0 to {MAX_EPOCH}); a sender "
                    "holding this pair's SSH key raised it before bmsync checked epochs. "
                    "Replace the key (README, 'A leaked key'), then on this node: 'bmsync "
                    "demote' if it is active, and 'bmsync reset-epoch --to EPOCH --reason "
                    '"..."\' with EPOCH the last promotion you trust'
                )
        return NodeRole(record.node, record.role, record.epoch, seen), record

    def save(self, role: NodeRole, changed: str, forced: str | None = None) -> None:
        if forced is None:
            _, old = self.load_record(lenient=True)
            forced = None if old is None else old.forced
        record = _RoleFile(
            role.node,
            role.role,
            role.epoch,
            _Seen(role.highest_seen.epoch, role.highest_seen.node),
            forced,
            changed,
        )
        write_atomic(self.path, msgspec.json.format(msgspec.json.encode(record)) + b"\n")


def require_active(role: NodeRole) -> None:
    """Only the active node sends, and not once superseded: NotActive,
    saying what to do, otherwise."""
    if role.role is not Role.ACTIVE:
        raise NotActive(
            f"{role.node} is passive (epoch {role.epoch}, highest seen {role.highest_seen}); "
            "only the active node sends. Run 'bmsync promote' on the node that must send; "
            "'bmsync resync --dry-run' and 'bmsync verify' compare without writing"
        )
    if role.is_stale():
        raise NotActive(
            f"{role.node} is stale: it is active at {role.stamp}, but {role.highest_seen} "
            f"has been promoted since. {stale_advice(role)}"
        )


def stale_advice(role: NodeRole) -> str:
    other = role.highest_seen.node or "the peer"
    return (
        f"If {other} is the active node now: 'bmsync demote' here. If this node must be "
        f"the active one: 'bmsync demote' on {other}, then 'bmsync promote' here (epoch "
        f"{role.highest_seen.epoch + 1})"
    )
