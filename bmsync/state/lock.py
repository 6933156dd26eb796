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

from bmsync.core.errors import PeerRefused

LOCK_NAME = "agent.lock"
# The signal a `bmsync agent` holding the sender lock answers by checking
# its node's role again (and refusing its sender if it must).
WAKE_SIGNAL = signal.SIGUSR1
# The signal that ends such an agent's session between two frames: the same
# sender has connected again (its old connection died where this node could
# not see it, in a partition), so that session can only be a dead one.
END_SIGNAL = signal.SIGTERM
# How long an ended agent may take before it is killed (a write to a dead
# link blocks it where a signal cannot end it cleanly).
END_GRACE_S = 5.0


class SenderLock:
    """An exclusive ``flock`` under ``state_dir``: one sender at a time.

    Released when the holder closes it or its process dies, so a sender
    killed mid-session never leaves the agent locked. The file says who
    holds it: a first line for people, then ``pid N``, ``wakes`` for an
    agent that answers ``WAKE_SIGNAL`` and ``END_SIGNAL``, and the sender's
    ``stamp EPOCH NODE``.
    """

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(
        self, holder: str, wakes: bool = False, stamp: tuple[int, str] | None = None
    ) -> None:
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
        sender = "" if stamp is None else f" stamp {stamp[0]} {stamp[1]}"
        record = (
            f"{holder} (agent pid {os.getpid()})\npid {os.getpid()}{' wakes' * wakes}{sender}\n"
        )
        os.pwrite(fd, record.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def held_by(self, stamp: tuple[int, str]) -> bool:
        """Whether the session holding the lock is a wakeable agent's for
        the sender ``stamp``."""
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            _, pid, wakes, held = _holder(fd)
        finally:
            os.close(fd)
        return pid is not None and wakes and held == stamp

    def end_session(
        self, timeout_s: float, clock: Callable[[], float] = time.monotonic, replace: bool = False
    ) -> str | None:
        """Make the session holding the lock (if any) check this node's role
        again, which the caller has just changed, and wait until it has
        ended; ``replace``: end it whatever its role (its sender has
        connected again). Returns what happened, for the operator
        (``None``: no session was open)."""
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if _try_lock(fd):
                return None
            holder, pid, wakes, _ = _holder(fd)
            if pid is None or not wakes:
                # an agent inside another program (tests, the daemon's own
                # restore): its next write checks the role and is refused
                return f"the session of {holder} is refused at its next write"
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, END_SIGNAL if replace else WAKE_SIGNAL)
            if _wait_free(fd, timeout_s, clock):
                return f"the writing session of {holder} has ended"
            if replace:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if _wait_free(fd, END_GRACE_S, clock):
                    return f"the writing session of {holder} was killed (pid {pid})"
            return (
                f"the session of {holder} (pid {pid}) did not end within {timeout_s:g} s; "
                "it writes nothing more (every write checks the role)"
            )
        finally:
            os.close(fd)


def _wait_free(fd: int, timeout_s: float, clock: Callable[[], float]) -> bool:
    deadline = clock() + timeout_s
    while clock() < deadline:
        if _try_lock(fd):
            return True
        time.sleep(0.01)
    return False


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


def _holder(fd: int) -> tuple[str, int | None, bool, tuple[int, str] | None]:
    """Who holds the lock: for people, pid, whether it answers the signals,
    and the sender's stamp."""
    lines = os.pread(fd, 400, 0).decode("utf-8", "replace").split("\n")
    holder = lines[0].strip() or "an unknown sender"
    words = lines[1].split() if len(lines) > 1 else []
    pid = int(words[1]) if len(words) >= 2 and words[0] == "pid" and words[1].isdigit() else None
    stamp = None
    if "stamp" in words and len(words) >= words.index("stamp") + 3:
        epoch, node = words[words.index("stamp") + 1 : words.index("stamp") + 3]
        stamp = (int(epoch), node) if epoch.isdigit() else None
    return holder, pid, "wakes" in words, stamp
