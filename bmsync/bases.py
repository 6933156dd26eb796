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
from bmsync.core.manifest import digest_bytes

log = structlog.get_logger("bmsync.bases")


class BaseStore:
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

    def put(self, digest: bytes, data: bytes) -> None:
        name = digest.hex()
        if name in self._sizes or not self.wanted(len(data)) or len(data) > self._max:
            return
        tmp = self._dir / f".tmp.{name}"
        tmp.write_bytes(data)
        os.replace(tmp, self._dir / name)
        self._sizes[name] = (os.stat(self._dir / name).st_mtime, len(data))
        total = sum(size for _, size in self._sizes.values())
        for old in sorted(self._sizes, key=lambda n: self._sizes[n][0]):
            if total <= self._max:
                break
            if old != name:
                total -= self._sizes[old][1]
                self._drop(old)

    def _drop(self, name: str) -> None:
        self._sizes.pop(name, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._dir / name)
