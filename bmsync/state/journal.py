"""The sender's record of what the peer has acknowledged: a snapshot of the
peer's manifest plus a journal of the batches acknowledged since."""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from pathlib import Path

import msgspec
import structlog

from bmsync.core.manifest import Entry, manifest_digest
from bmsync.fs.atomic import write_atomic

log = structlog.get_logger("bmsync.state")


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
