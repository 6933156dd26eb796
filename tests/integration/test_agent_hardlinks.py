"""A passive node's file hard-linked to a file outside its root: the
active node's metadata changes (chmod, chown, xattrs, touch) land on the
passive node's path only, never on the inode they share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from msgspec.structs import replace

from bmsync.core.manifest import Entry, Kind, digest_bytes
from bmsync.core.ops import Rename, SetMeta
from tests.integration.agent_harness import Node

CONTENT = b"listen 8080\n"
NEW_MTIME = 1_700_000_000_123_456_789
XATTR = "user.bmsync.test"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file outside the root (same filesystem), as someone left it."""
    path = tmp_path / "outside" / "secret.conf"
    path.parent.mkdir()
    path.write_bytes(CONTENT)
    os.chmod(path, 0o600)
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    return path


def identity(path: Path) -> tuple[int, int, int, int, int, list[str], bytes]:
    st = os.stat(path)
    return (
        st.st_ino,
        st.st_mode & 0o7777,
        st.st_uid,
        st.st_gid,
        st.st_mtime_ns,
        os.listxattr(path),
        path.read_bytes(),
    )


WANTED = Entry(
    Kind.FILE,
    0o644,
    1234,
    4321,
    NEW_MTIME,
    len(CONTENT),
    digest_bytes(CONTENT),
    xattrs=((XATTR.encode(), b"set by the active"),),
)


def assert_has_wanted(path: Path) -> None:
    st = os.stat(path)
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns) == (
        0o644,
        1234,
        4321,
        NEW_MTIME,
    )
    assert os.getxattr(path, XATTR) == b"set by the active"
    assert path.read_bytes() == CONTENT
    assert st.st_nlink == 1


def test_setmeta_on_a_file_hard_linked_outside_the_root(node: Node, outside: Path) -> None:
    here = node.root / "etc" / "app.conf"
    os.link(outside, here)
    assert os.stat(here).st_nlink == 2
    before = identity(outside)

    node.hello()
    applied = node.commit(SetMeta(b"etc/app.conf", WANTED))

    assert applied.failures == []
    assert identity(outside) == before  # same inode, mode, owner, mtime, xattrs, content
    assert_has_wanted(here)
    ((path, entry),) = applied.results
    assert path == b"etc/app.conf" and entry == WANTED
    assert not any(p.name.startswith(".bmsync-tmp.") for p in here.parent.iterdir())


def test_a_moved_file_hard_linked_outside_the_root(node: Node, outside: Path) -> None:
    src = node.root / "etc" / "old.conf"
    os.link(outside, src)
    before = identity(outside)

    node.hello()
    applied = node.commit(Rename(b"etc/old.conf", b"etc/new.conf", WANTED))

    assert applied.failures == []
    assert identity(outside) == before
    assert not src.exists()
    assert_has_wanted(node.root / "etc" / "new.conf")


def test_a_single_link_file_is_still_changed_in_place(node: Node) -> None:
    here = node.root / "etc" / "app.conf"
    here.write_bytes(CONTENT)
    inode = os.stat(here).st_ino
    node.hello()
    assert node.commit(SetMeta(b"etc/app.conf", replace(WANTED, xattrs=()))).failures == []
    st = os.stat(here)
    assert (st.st_ino, st.st_mode & 0o7777, st.st_mtime_ns) == (inode, 0o644, NEW_MTIME)
