"""``state_dir/operation.lock``: one HA operation at a time on a node.

Held by the node an operation runs on for its whole length, and by the
agent serving its steps on the other node for the session's: two
operations (a switchover from each side, say) never overlap. The file
says who holds it; the lock itself is the kernel's (flock), released when
the holder exits, however it exits."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from bmsync.core.errors import HaRefused

LOCK_NAME = "operation.lock"


class OperationLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, holder: str) -> None:
        """Take the lock for ``holder`` (said to whoever finds it taken);
        HaRefused naming the holder if another operation has it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            other = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise HaRefused(
                f"another HA operation runs on this node ({other}); wait for it to end "
                "('bmsync ha status' shows the last one), then retry"
            ) from exc
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.pwrite(fd, f"{holder}, pid {os.getpid()}, since {stamp}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
