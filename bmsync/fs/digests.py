"""A digest cache: a file whose inode, size, mtime and ctime are unchanged
is not read again, and its manifest entry is the one cached.

ctime cannot be set by anyone and moves on every write, chmod, chown or
xattr change, so matching (inode, size, mtime, ctime) means the same file,
with the same mode, owner and xattrs.
The one hole is a change within the same timestamp tick as the hash
("racy git"): a file changed less than ``RACY_NS`` before it was hashed is
not cached, and is read again next time. Stored under ``state_dir``;
losing it costs a full read, never a wrong answer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import structlog

from bmsync.core.manifest import Entry
from bmsync.fs.atomic import write_atomic

log = structlog.get_logger("bmsync.digests")

# Filesystem timestamps come from a coarse clock; two seconds is far beyond
# any tick, and a file this fresh is usually still being edited anyway.
RACY_NS = 2_000_000_000
CACHE_NAME = "digests"


class _Record(msgspec.Struct, array_like=True, frozen=True, gc=False):  # no cycles
    """The entry holds the file's size and mtime; with the inode and ctime
    that is the whole key."""

    ino: int
    ctime_ns: int
    entry: Entry


class DigestCache:
    """Loaded on the first lookup (in the scanning thread, not at start-up)."""

    def __init__(self, state_dir: Path, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._path = state_dir / CACHE_NAME
        self._clock_ns = clock_ns
        self._old: dict[bytes, _Record] | None = None
        self._new: dict[bytes, _Record] = {}
        self.hits = self.misses = 0

    def _load(self) -> dict[bytes, _Record]:
        try:
            loaded: dict[bytes, _Record] = msgspec.msgpack.decode(
                self._path.read_bytes(), type=dict[bytes, _Record]
            )
            return loaded
        except FileNotFoundError:
            pass
        except (msgspec.MsgspecError, ValueError, OSError) as exc:
            log.warning("digest_cache_unreadable", path=str(self._path), error=str(exc))
        return {}

    def lookup(self, path: bytes, st: os.stat_result) -> Entry | None:
        if self._old is None:
            self._old = self._load()
        record = self._old.get(path)
        if (
            record is None
            or record.ctime_ns != st.st_ctime_ns
            or record.ino != st.st_ino
            or record.entry.size != st.st_size
            or record.entry.mtime_ns != st.st_mtime_ns
        ):
            self.misses += 1
            return None
        self.hits += 1
        self._new[path] = record
        return record.entry

    def store(self, path: bytes, st: os.stat_result, entry: Entry) -> None:
        if st.st_ctime_ns >= self._clock_ns() - RACY_NS:
            return  # racy: it may change again within the same tick
        assert (entry.size, entry.mtime_ns) == (st.st_size, st.st_mtime_ns)
        self._new[path] = _Record(st.st_ino, st.st_ctime_ns, entry)

    def save(self) -> None:
        """Keep what the last full scan used (paths gone are dropped)."""
        write_atomic(self._path, msgspec.msgpack.encode(self._new))
        self._old, self._new = self._new, {}
