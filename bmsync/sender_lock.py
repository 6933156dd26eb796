"""The agent's one-sender lock under ``state_dir``, and how a change of
role ends the session holding it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from bmsync.errors import PeerRefused

LOCK_NAME = "agent.lock"
# The signal a `bmsync agent` holding the sender lock answers by checking
# its node's role again (and refusing its sender if it must).
WAKE_SIGNAL = signal.SIGUSR1


class SenderLock:
    """An exclusive ``flock`` under ``state_dir``: one sender at a time.

    Released when the holder closes it or its process dies, so a sender
    killed mid-session never leaves the agent locked. The file says who
    holds it: a first line for people, then ``pid N`` and, for an agent
    that answers ``WAKE_SIGNAL``, ``wakes``.
    """

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, holder: str, wakes: bool = False) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            other = os.pread(fd, 200, 0).decode("utf-8", "replace").split("\n")[0].strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise PeerRefused(
                    f"another sender is writing to this node ({other or 'unknown'}); "
                    "wait for it to finish"
                ) from exc
            raise
        os.ftruncate(fd, 0)
        record = f"{holder} (agent pid {os.getpid()})\npid {os.getpid()}{' wakes' * wakes}\n"
        os.pwrite(fd, record.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def end_session(
        self, timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> str | None:
        """Make the session holding the lock (if any) check this node's role
        again, which the caller has just changed, and wait until it has
        ended. Returns what happened, for the operator (``None``: no session
        was open)."""
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if _try_lock(fd):
                return None
            holder, pid, wakes = _holder(fd)
            if pid is None or not wakes:
                # an agent inside another program (tests, the daemon's own
                # restore): its next write checks the role and is refused
                return f"the session of {holder} is refused at its next write"
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, WAKE_SIGNAL)
            deadline = clock() + timeout_s
            while clock() < deadline:
                if _try_lock(fd):
                    return f"the writing session of {holder} has ended"
                time.sleep(0.01)
            return (
                f"the session of {holder} (pid {pid}) did not end within {timeout_s:g} s; "
                "it writes nothing more (every write checks the role)"
            )
        finally:
            os.close(fd)


def _try_lock(fd: int) -> bool:
    """Whether the lock is free (taken and released at once if so)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _holder(fd: int) -> tuple[str, int | None, bool]:
    lines = os.pread(fd, 400, 0).decode("utf-8", "replace").split("\n")
    holder = lines[0].strip() or "an unknown sender"
    words = lines[1].split() if len(lines) > 1 else []
    pid = int(words[1]) if len(words) >= 2 and words[0] == "pid" and words[1].isdigit() else None
    return holder, pid, "wakes" in words
