"""Directory operations, symlinks, moves, deletes and metadata, applied
inside the root as they arrive.

Each is atomic on its own (a symlink is made under a temporary name and
renamed in), so unlike file content it need not wait for the batch's
commit. Metadata is set in place only on a file with one name: an inode
with other names (hard links, perhaps to a file outside the root) would
change under them too, so such a file is replaced by a copy instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from bmsync.core.errors import ProtocolError
from bmsync.core.frames import Failure
from bmsync.core.manifest import Entry, Kind, new_hasher
from bmsync.core.ops import Delete, Mkdir, Rename, SetMeta, Symlink
from bmsync.core.paths import basename, join, parent, show
from bmsync.fs.confine import Confined, OpFailed
from bmsync.fs.files import O_DIR, O_READ, hash_fd, kind_of, write_all, write_xattrs
from bmsync.fs.tempfiles import create_temp, remove_temp, tmp_name

log = structlog.get_logger("bmsync.tree")


@dataclass
class Changes:
    """What a batch did so far: the paths it created, replaced, moved or
    deleted (their directories are fsynced once each at commit, and the
    batch's Applied says what each holds then), and what failed."""

    touched: list[bytes] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def fail(self, path: bytes, why: str, code: str = "") -> None:
        log.warning("op_failed", path=show(path), reason=why)
        self.failures.append(Failure(path, why, code))


class Keeper(Protocol):
    """Told before a file is replaced or deleted: a chance to keep a copy
    of a file changed on this node since bmsync wrote it (the agent's
    backups). ``before_change`` raises OpFailed when the file must be left
    as it is; ``kept`` lists the copies made, for the batch's Applied."""

    kept: list[tuple[bytes, str]]

    def before_change(self, dir_fd: int, path: bytes, verb: str) -> None: ...

    def base_verified(self, path: bytes, digest: bytes) -> None:
        """``path`` was just read and has ``digest`` (a delta's base)."""


def set_meta_fd(fd: int, entry: Entry, times: bool) -> None:
    """Owner before mode (chown clears set-id bits), ACL xattrs after mode
    (chmod rewrites the ACL mask), mtime last (everything else touches ctime
    only, but keep the order obvious)."""
    os.fchown(fd, entry.uid, entry.gid)
    os.fchmod(fd, entry.mode)
    try:
        write_xattrs(fd, entry.xattrs)
    except OSError as exc:
        raise OpFailed(f"cannot set extended attributes: {exc.strerror}") from exc
    if times:
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))


def mkdir(where: Confined, op: Mkdir, changes: Changes) -> None:
    if op.entry.kind != Kind.DIR:
        raise ProtocolError(f"Mkdir {show(op.path)} with a {op.entry.kind.name} entry")
    where.check_covered(op.path, True)
    dir_fd = where.open_parent(op.path)
    name = basename(op.path)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        fd = os.open(name, O_DIR, dir_fd=dir_fd)
        try:
            set_meta_fd(fd, op.entry, times=False)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)
    changes.touched.append(op.path)


def symlink(where: Confined, op: Symlink, changes: Changes) -> None:
    if op.entry.kind != Kind.SYMLINK:
        raise ProtocolError(f"Symlink {show(op.path)} with a {op.entry.kind.name} entry")
    where.check_covered(op.path, False)
    dir_fd = where.open_parent(op.path)
    tmp = tmp_name()
    try:
        os.symlink(op.entry.target, tmp, dir_fd=dir_fd)
        try:
            os.chown(tmp, op.entry.uid, op.entry.gid, dir_fd=dir_fd, follow_symlinks=False)
            os.utime(
                tmp,
                ns=(op.entry.mtime_ns, op.entry.mtime_ns),
                dir_fd=dir_fd,
                follow_symlinks=False,
            )
            os.rename(tmp, basename(op.path), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            remove_temp(dir_fd, tmp, join(parent(op.path), tmp))
            raise
    finally:
        os.close(dir_fd)
    changes.touched.append(op.path)


def rename(where: Confined, op: Rename, changes: Changes) -> None:
    """Move a file whose content is still the one the sender moved (else
    OpFailed: the sender sends it whole)."""
    if op.entry.kind != Kind.FILE:
        raise ProtocolError(f"Rename to {show(op.dst)} with a {op.entry.kind.name} entry")
    where.check_covered(op.src, False)
    where.check_covered(op.dst, False)
    src_dir = where.open_parent(op.src)
    try:
        dst_dir = where.open_parent(op.dst)
        try:
            fd = os.open(basename(op.src), O_READ, dir_fd=src_dir)
            copy = None
            try:
                st = os.fstat(fd)
                if kind_of(st.st_mode) != Kind.FILE:
                    raise OpFailed(f"move source {show(op.src)} is not a regular file")
                changed = f"move source {show(op.src)} changed on this node; resend"
                if st.st_nlink > 1:
                    # its inode has other names (maybe outside the root):
                    # move a copy, leave theirs as it is
                    copy = _copy_with_meta(fd, dst_dir, parent(op.dst), op.entry, changed)
                else:
                    digest, _ = hash_fd(fd)
                    if digest != op.entry.digest:
                        raise OpFailed(changed)
                    set_meta_fd(fd, op.entry, times=True)
            finally:
                os.close(fd)
            if copy is None:
                os.rename(
                    basename(op.src), basename(op.dst), src_dir_fd=src_dir, dst_dir_fd=dst_dir
                )
            else:
                _put_in_place(dst_dir, copy, op.dst)
                changes.touched.extend((op.src, op.dst))
                os.unlink(basename(op.src), dir_fd=src_dir)
                return
        finally:
            os.close(dst_dir)
    finally:
        os.close(src_dir)
    changes.touched.extend((op.src, op.dst))


def delete(where: Confined, op: Delete, changes: Changes, keeper: Keeper | None) -> None:
    """Delete what ``op`` says, if it is still of that kind (a directory
    only if empty); ``keeper`` sees a file first."""
    where.check_covered(op.path, op.kind == Kind.DIR)
    dir_fd = where.open_parent(op.path)
    name = basename(op.path)
    try:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        found = kind_of(st.st_mode)
        if found != op.kind:
            raise OpFailed(
                f"is a {found.name.lower() if found else 'special file'} here, "
                f"not a {op.kind.name.lower()}; not deleted"
            )
        if op.kind == Kind.FILE and keeper is not None:
            keeper.before_change(dir_fd, op.path, "deleted")
        if op.kind == Kind.DIR:
            try:
                os.rmdir(name, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY:
                    raise OpFailed(
                        "directory not empty: it holds paths this node does not sync; kept"
                    ) from exc
                raise
        else:
            os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    changes.touched.append(op.path)


def set_meta(where: Confined, op: SetMeta) -> None:
    """Set ``op``'s metadata on what ``path`` holds, if it is of its kind."""
    dir_fd = where.open_parent(op.path)
    name = basename(op.path)
    entry = op.entry
    try:
        if entry.kind == Kind.SYMLINK:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if kind_of(st.st_mode) != Kind.SYMLINK:
                raise OpFailed("is not a symlink here")
            os.chown(name, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=False)
            os.utime(
                name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False
            )
        else:
            flags = O_DIR if entry.kind == Kind.DIR else O_READ
            try:
                fd = os.open(name, flags, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OpFailed(f"is not a {entry.kind.name.lower()} here") from exc
                raise
            copy = None
            try:
                st = os.fstat(fd)
                if kind_of(st.st_mode) != entry.kind:
                    raise OpFailed(f"is not a {entry.kind.name.lower()} here")
                if entry.kind == Kind.FILE and st.st_nlink > 1:
                    # its inode has other names (maybe outside the root):
                    # replace this one by a copy, leave theirs as it is
                    copy = _copy_with_meta(fd, dir_fd, parent(op.path), entry, None)
                else:
                    set_meta_fd(fd, entry, times=True)
            finally:
                os.close(fd)
            if copy is not None:
                _put_in_place(dir_fd, copy, op.path)
    finally:
        os.close(dir_fd)


def _copy_with_meta(
    src: int, dir_fd: int, where: bytes, entry: Entry, changed: str | None
) -> bytes:
    """A new temporary file in ``dir_fd`` (directory ``where``): a copy of
    ``src`` with ``entry``'s owner, mode, xattrs and mtime, fsynced; its
    name. For a file whose inode has other names (hard links, perhaps to a
    file outside the root), which metadata set in place would change too.
    ``changed``: the content must have ``entry``'s digest, or OpFailed with
    this reason."""
    tmp, out = create_temp(dir_fd)
    try:
        hasher = new_hasher()
        os.lseek(src, 0, os.SEEK_SET)
        while chunk := os.read(src, 1 << 20):
            hasher.update(chunk)
            write_all(out, chunk)
        if changed is not None and hasher.digest() != entry.digest:
            raise OpFailed(changed)
        set_meta_fd(out, entry, times=True)
        os.fsync(out)
    except BaseException:
        os.close(out)
        remove_temp(dir_fd, tmp, join(where, tmp))
        raise
    os.close(out)
    return tmp


def _put_in_place(dir_fd: int, tmp: bytes, path: bytes) -> None:
    """Rename the temporary file ``tmp`` over ``path`` (in ``dir_fd``)."""
    try:
        os.rename(tmp, basename(path), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        remove_temp(dir_fd, tmp, join(parent(path), tmp))
        raise
