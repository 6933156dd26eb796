"""This node's state directory and the agent's one-sender lock."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from bmsync.errors import ConfigError, PeerRefused

LOCK_NAME = "agent.lock"


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


class SenderLock:
    """An exclusive ``flock`` under ``state_dir``: one sender at a time.

    Released when the holder closes it or its process dies, so a sender
    killed mid-session never leaves the agent locked.
    """

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, holder: str) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            other = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise PeerRefused(
                    f"another sender is writing to this node ({other or 'unknown'}); "
                    "wait for it to finish"
                ) from exc
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder} (agent pid {os.getpid()})\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
