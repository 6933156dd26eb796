"""Confinement: how a write reaches a path below this node's root, and
whether it may.

Whoever sends changes may be hostile (a sender's key may have leaked), and
this node's own tree may hold a symlink where a directory is expected. So
every path a write touches (already checked by the frame codec: relative,
normalised, no NUL, no ``..``) is checked against this node's sync set:
paths it excludes are never written nor deleted, so the node keeps its own
identity. And every directory is walked from the open root one component
at a time with ``O_NOFOLLOW``: a symlink planted in a parent stops the walk
instead of leading a write outside the root.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from bmsync.core.excludes import SyncSet
from bmsync.core.manifest import Entry, Kind
from bmsync.core.paths import basename, parent, show
from bmsync.fs.files import O_DIR, entry_of, kind_of, open_dir, open_root, read_xattrs
from bmsync.fs.scan import read_file_entry


class OpFailed(Exception):
    """One operation could not be applied; the session goes on (the
    operation is a ``Failure`` of its batch)."""


def reason(exc: Exception) -> str:
    """Why ``exc`` failed, for a ``Failure`` or a log line."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


class Confined:
    """A root, open, and the sync set that says what below it may change.
    Opening it raises OSError if the root cannot be opened."""

    def __init__(self, root: Path, syncset: SyncSet) -> None:
        self.root = root
        self.syncset = syncset
        self.fd: int | None = open_root(root)

    @property
    def root_fd(self) -> int:
        assert self.fd is not None, "used after close()"
        return self.fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def check_covered(self, path: bytes, is_dir: bool) -> None:
        """OpFailed unless this node syncs ``path``."""
        if not self.syncset.covers(path, is_dir):
            raise OpFailed(
                "outside this node's sync set (not under a synced path, or excluded "
                "here); left untouched"
            )

    def open_dir(self, path: bytes) -> int:
        """Directory ``path``, open, reached without following a symlink."""
        return open_dir(self.root_fd, path)

    def open_parent(self, path: bytes) -> int:
        """The parent directory of ``path``, creating missing directories
        above the sync paths (``usr/share/...``) but nothing inside them."""
        fd = os.dup(self.root_fd)
        done = b""
        try:
            for part in parent(path).split(b"/") if parent(path) else ():
                done = done + b"/" + part if done else part
                try:
                    child = os.open(part, O_DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not self.syncset.is_implied(done):
                        raise OpFailed(f"parent directory {show(done)} is missing") from None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, O_DIR, dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise OpFailed(
                    f"{show(done)} is a symlink or not a directory; refusing to write through it"
                ) from exc
            raise
        except OpFailed:
            os.close(fd)
            raise
        return fd

    def entry_now(self, path: bytes) -> Entry | None:
        """What ``path`` holds now, or ``None`` (absent, unreadable)."""
        try:
            dir_fd = self.open_dir(parent(path))
        except OSError:
            return None
        name = basename(path)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            kind = kind_of(st.st_mode)
            if kind == Kind.FILE:
                return read_file_entry(dir_fd, name)
            if kind == Kind.SYMLINK:
                return entry_of(st, kind, target=os.readlink(name, dir_fd=dir_fd))
            if kind == Kind.DIR:
                fd = os.open(name, O_DIR, dir_fd=dir_fd)
                try:
                    return entry_of(os.fstat(fd), kind, xattrs=read_xattrs(fd))
                finally:
                    os.close(fd)
            return None
        except OSError:
            return None
        finally:
            os.close(dir_fd)
