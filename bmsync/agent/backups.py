"""Copies of files changed on this node before bmsync replaces them.

The sender says what it believes each file here is (``Expect``). A file
that turns out to be another version was edited on this node (by an
operator, or by a service that should not run on a passive node): before it
is replaced or deleted, a copy goes to ``state_dir/backups/<time>/<path>``
and the batch's Applied reports it, so nothing written here is lost
silently. Only the agent keeps them: the daemon's own restore sends no
``Expect``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import structlog

from bmsync.core.manifest import Kind
from bmsync.core.paths import basename, show
from bmsync.fs.confine import OpFailed, reason
from bmsync.fs.files import O_READ, hash_fd, kind_of, write_all

log = structlog.get_logger("bmsync.agent")

# Under state_dir.
BACKUPS_NAME = "backups"


class Backups:
    """One batch's expectations and the copies kept of files that did not
    meet them (a ``Keeper`` for the batch's TreeWriter)."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        # what the sender believes each file is (Expect)
        self.expected: dict[bytes, bytes] = {}
        self.kept: list[tuple[bytes, str]] = []
        self._dir: Path | None = None

    def expect(self, path: bytes, digest: bytes) -> None:
        self.expected[path] = digest

    def base_verified(self, path: bytes, digest: bytes) -> None:
        """``path`` was just read and has ``digest``: no second read."""
        if self.expected.get(path) == digest:
            del self.expected[path]

    def before_change(self, dir_fd: int, path: bytes, verb: str) -> None:
        """Before ``path`` is ``verb`` (replaced, deleted): if the sender
        expected another version (someone edited it on this node), keep a
        copy under state_dir/backups/<time>/<path>, and report it in
        Applied. OpFailed if the copy cannot be made: then ``path`` must
        not be touched (nothing of the copy is left)."""
        expected = self.expected.pop(path, None)
        if expected is None:
            return
        try:
            fd = os.open(basename(path), O_READ, dir_fd=dir_fd)
        except OSError:
            return  # nothing here (or a symlink): nothing to lose
        try:
            st = os.fstat(fd)
            if kind_of(st.st_mode) != Kind.FILE:
                return
            digest, _ = hash_fd(fd)
            if digest == expected:
                return
            target = self._backup_path(path)
            top = self._state_dir / BACKUPS_NAME
            try:
                _copy_out(fd, st, target, top)
            except OSError as exc:
                log.error("backup_failed", path=show(path), kept=str(target), reason=reason(exc))
                raise OpFailed(
                    f"changed on this node since bmsync wrote it, and the copy to keep before "
                    f"it is {verb} cannot be written to {target}: {reason(exc)}; not {verb}, "
                    f"this node's version is left as it is. Free space in {top} (or repair its "
                    "filesystem); the change is sent again"
                ) from exc
        finally:
            os.close(fd)
        self.kept.append((path, str(target)))
        log.warning(
            "changed_on_this_node",
            path=show(path),
            kept=str(target),
            what="not the version bmsync wrote; a copy is kept before it is replaced",
        )

    def _backup_path(self, path: bytes) -> Path:
        if self._dir is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            self._dir = self._state_dir / BACKUPS_NAME / stamp
        return self._dir / os.fsdecode(path)


def _copy_out(src: int, st: os.stat_result, target: Path, top: Path) -> None:
    """Copy the open file ``src`` (``st``: its stat) to ``target``, with
    its owner, mode and times, fsynced. On failure, nothing is left of the
    copy (neither the partial file nor the directories made for it)."""
    made = [d for d in (target.parent, *target.parent.parents) if d.is_relative_to(top)]
    made = [d for d in made if not d.exists()]
    out: int | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.lseek(src, 0, os.SEEK_SET)
        while chunk := os.read(src, 1 << 20):
            write_all(out, chunk)
        os.fchown(out, st.st_uid, st.st_gid)
        os.fchmod(out, stat.S_IMODE(st.st_mode))
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.fsync(out)
    except OSError:
        if out is not None:  # ours (O_EXCL): never someone else's file
            os.close(out)
            out = None
            with contextlib.suppress(OSError):
                os.unlink(target)
        for directory in made:  # deepest first; one holding other copies stays
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise
    finally:
        if out is not None:
            os.close(out)
