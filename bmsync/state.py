"""This node's state directory: its role and epochs, the agent's
one-sender lock, and the sender's record of what the peer has acknowledged."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import msgspec
import structlog

from bmsync.core.frames import MAX_EPOCH, Role
from bmsync.core.guard import NodeRole, Stamp
from bmsync.core.manifest import Entry, manifest_digest
from bmsync.errors import ConfigError, NotActive, RoleStateError

log = structlog.get_logger("bmsync.state")

# Taken shared by the agent while it writes, exclusive by whatever changes
# role.json: a promotion is ordered with every write, never in the middle
# of one.
ROLE_LOCK_NAME = "role.lock"


def ensure_state_dir(path: Path) -> Path:
    """Create ``state_dir`` (mode 0700) if missing; refuse one others can write."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as exc:
        raise ConfigError(
            f"state_dir {path}: cannot create it ({exc.strerror}); "
            "choose a writable location with 'state_dir:'"
        ) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"state_dir {path} is not a directory")
    if st.st_mode & 0o022:
        raise ConfigError(
            f"state_dir {path} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run 'chmod 700 {path}'"
        )
    return path


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


class _Header(msgspec.Struct, frozen=True):
    """The start of a snapshot: enough to confirm it with the agent without
    decoding 100,000 entries."""

    peer: str
    digest: bytes  # manifest_digest of the entries


class _Snapshot(msgspec.Struct, frozen=True):
    peer: str
    entries: list[tuple[bytes, Entry]]


_Record = list[tuple[bytes, Entry | None]]
_LENGTH = struct.Struct(">I")
SNAPSHOT_NAME = "peer-manifest"
JOURNAL_NAME = "peer-manifest.journal"
# The journal is folded into a new snapshot once it outgrows this (or the
# snapshot itself), so loading stays fast and the disk use bounded.
JOURNAL_COMPACT_BYTES = 4 * 1024 * 1024


class ManifestStore:
    """The peer's acknowledged manifest on disk: a snapshot (replaced
    atomically) plus a journal of acknowledged batches (appended and fsynced
    before the batch counts as done). A record torn by a crash is ignored on
    load; the next reconcile compares with the peer anyway."""

    def __init__(self, state_dir: Path) -> None:
        self._snapshot = state_dir / SNAPSHOT_NAME
        self._journal = state_dir / JOURNAL_NAME
        self._journal_fd: int | None = None
        self._journal_bytes = 0
        self._snapshot_bytes = 0

    def load(self, peer: str) -> dict[bytes, Entry]:
        """The last acknowledged manifest of ``peer`` (empty if none, or if
        what is stored belongs to another node)."""
        stored_peer, entries = self.load_any()
        return entries if stored_peer == peer else {}

    def stored_digest(self) -> tuple[str, bytes] | None:
        """The peer and ``manifest_digest`` of the stored manifest (``None``
        if there is none): from the snapshot's header alone after a clean
        stop; when a journal follows the snapshot (after a crash), from both,
        decoded and dropped."""
        try:
            if self._journal.stat().st_size > 0:
                peer, entries = self.load_any()
                return (peer, manifest_digest(entries)) if entries else None
        except FileNotFoundError:
            pass
        try:
            with open(self._snapshot, "rb") as f:
                (length,) = _LENGTH.unpack(f.read(_LENGTH.size))
                header = msgspec.msgpack.decode(f.read(length), type=_Header)
        except FileNotFoundError:
            return None
        except (msgspec.MsgspecError, ValueError, OSError, struct.error) as exc:
            log.warning("manifest_unreadable", path=str(self._snapshot), error=str(exc))
            return None
        return header.peer, header.digest

    def load_any(self) -> tuple[str, dict[bytes, Entry]]:
        """The peer the stored manifest belongs to, and that manifest."""
        try:
            data = self._snapshot.read_bytes()
            (length,) = _LENGTH.unpack_from(data)
            snap = msgspec.msgpack.decode(memoryview(data)[_LENGTH.size + length :], type=_Snapshot)
        except FileNotFoundError:
            return "", {}
        except (msgspec.MsgspecError, ValueError, OSError, struct.error) as exc:
            log.warning("manifest_unreadable", path=str(self._snapshot), error=str(exc))
            return "", {}
        self._snapshot_bytes = len(data)
        entries = dict(snap.entries)
        try:
            journal = self._journal.read_bytes()
        except FileNotFoundError:
            journal = b""
        offset = 0
        decoder = msgspec.msgpack.Decoder(_Record)
        while offset + _LENGTH.size <= len(journal):
            (length,) = _LENGTH.unpack_from(journal, offset)
            body = journal[offset + _LENGTH.size : offset + _LENGTH.size + length]
            if len(body) < length:
                break  # torn by a crash: that batch was never acknowledged here
            try:
                record = decoder.decode(body)
            except (msgspec.MsgspecError, ValueError):
                break
            for path, entry in record:
                if entry is None:
                    entries.pop(path, None)
                else:
                    entries[path] = entry
            offset += _LENGTH.size + length
        if offset < len(journal):
            # Records appended after a torn one would never be read: cut it.
            log.warning("journal_truncated", path=str(self._journal), kept_bytes=offset)
            os.truncate(self._journal, offset)
        self._journal_bytes = offset
        return snap.peer, entries

    def replace(self, peer: str, entries: Mapping[bytes, Entry]) -> None:
        header = msgspec.msgpack.encode(_Header(peer, manifest_digest(entries)))
        body = msgspec.msgpack.encode(_Snapshot(peer, sorted(entries.items())))
        data = _LENGTH.pack(len(header)) + header + body
        write_atomic(self._snapshot, data)
        self._snapshot_bytes = len(data)
        self.close()
        self._journal.unlink(missing_ok=True)
        self._journal_bytes = 0

    def record(self, changes: _Record) -> None:
        if not changes:
            return
        if self._journal_fd is None:
            self._journal_fd = os.open(
                self._journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
        body = msgspec.msgpack.encode(changes)
        data = _LENGTH.pack(len(body)) + body
        os.write(self._journal_fd, data)
        os.fdatasync(self._journal_fd)
        self._journal_bytes += len(data)

    def needs_compaction(self) -> bool:
        return self._journal_bytes > max(JOURNAL_COMPACT_BYTES, self._snapshot_bytes)

    def has_journal(self) -> bool:
        return self._journal_bytes > 0

    def close(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` so that a reader (or a crash) sees the old content or
    the new, never a mix: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
