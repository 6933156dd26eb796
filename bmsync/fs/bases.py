"""Delta bases: copies of file versions the peer acknowledged, on disk.

Content-addressed (the file name is the xxh3-128 digest), under
``state_dir/bases``, bounded by ``max_bytes``: the least recently used go
first. Only files of ``DELTA_MIN_BYTES`` or more are kept (smaller ones go
whole anyway). Losing this directory costs bandwidth, never correctness:
without a base the file is sent whole.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import structlog

from bmsync.core.delta import DELTA_MAX_BYTES, DELTA_MIN_BYTES
from bmsync.core.manifest import digest_bytes, new_hasher

log = structlog.get_logger("bmsync.bases")

# Small: copies run in a worker thread, and glibc does not hand a thread
# arena's freed top back (malloc_trim trims the main arena's only); 1 MiB
# chunks left 2 MiB resident in the idle daemon.
COPY_CHUNK_BYTES = 64 * 1024


class BaseStore:
    @classmethod
    def in_state_dir(cls, state_dir: Path, max_mb: int) -> BaseStore:
        """The store a node keeps under its ``state_dir`` (``sync.delta_cache_mb``)."""
        return cls(state_dir / "bases", max_mb << 20)

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self._dir = directory
        self._max = max_bytes
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._sizes: dict[str, tuple[float, int]] = {}  # name -> (last use, size)
        for entry in os.scandir(directory):
            if entry.is_file() and len(entry.name) == 32:
                st = entry.stat()
                self._sizes[entry.name] = (st.st_mtime, st.st_size)
            elif entry.name.startswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    @staticmethod
    def wanted(size: int) -> bool:
        return DELTA_MIN_BYTES <= size <= DELTA_MAX_BYTES

    def __contains__(self, digest: bytes) -> bool:
        return digest.hex() in self._sizes

    def get(self, digest: bytes) -> bytes | None:
        name = digest.hex()
        if name not in self._sizes:
            return None
        path = self._dir / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            del self._sizes[name]
            return None
        if digest_bytes(data) != digest:  # damaged on disk: useless as a base
            self._drop(name)
            return None
        os.utime(path)
        self._sizes[name] = (os.stat(path).st_mtime, len(data))
        return data

    def copy_in(self, digest: bytes, fd: int, size: int) -> bool:
        """Keep the content of ``fd`` (``size`` bytes, read from where it
        stands) if it is the version ``digest`` names; ``False`` if it is not
        (changed since), or not worth keeping. Streamed: a 20 MB file read
        whole in a worker thread stayed resident in its malloc arena."""
        name = digest.hex()
        if name in self._sizes or not self.wanted(size) or size > self._max:
            return False
        tmp = self._dir / f".tmp.{name}"
        hasher = new_hasher()
        copied = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := os.read(fd, COPY_CHUNK_BYTES):
                    hasher.update(chunk)
                    out.write(chunk)
                    copied += len(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if copied != size or hasher.digest() != digest:
            tmp.unlink()
            return False
        os.replace(tmp, self._dir / name)
        self._sizes[name] = (os.stat(self._dir / name).st_mtime, size)
        total = sum(kept for _, kept in self._sizes.values())
        for old in sorted(self._sizes, key=lambda n: self._sizes[n][0]):
            if total <= self._max:
                break
            if old != name:
                total -= self._sizes[old][1]
                self._drop(old)
        return True

    def _drop(self, name: str) -> None:
        self._sizes.pop(name, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._dir / name)
