"""Scanning a node's tree (bmsync/fs/scan.py) on a real filesystem: what a
manifest holds, and what a scan reports beside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from bmsync.core.errors import TreeTooLarge
from bmsync.core.excludes import Rule, SyncSet
from bmsync.core.manifest import Kind
from bmsync.fs.files import open_root
from bmsync.fs.scan import TMP_PREFIX, scan_paths, scan_tree


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    etc = root / "etc"
    (etc / "sub").mkdir(parents=True)
    (etc / "a.conf").write_bytes(b"alpha\n")
    os.chmod(etc / "a.conf", 0o640)
    os.chown(etc / "a.conf", 1234, 5678)
    os.utime(etc / "a.conf", ns=(1, 1_700_000_000_123_456_789))
    os.setxattr(etc / "a.conf", "user.note", b"kept")
    (etc / "sub" / "b.conf").write_bytes(b"beta\n")
    (etc / "link").symlink_to("sub/b.conf")
    (etc / "a.conf.swp").write_bytes(b"editor swap")
    os.mkfifo(etc / "pipe")
    (etc / (TMP_PREFIX.decode() + "123")).write_bytes(b"half written by a killed agent")
    os.link(etc / "sub" / "b.conf", etc / "b.hard")
    (root / "outside.conf").write_bytes(b"not synced")
    return root


SYNCSET = SyncSet.build(["/etc", "/opt/absent"], [Rule("*.swp")])


def test_a_scan_reads_every_entry_with_its_metadata(tree: Path) -> None:
    scan = scan_tree(tree, SYNCSET)
    assert sorted(scan.entries) == [
        b"etc",
        b"etc/a.conf",
        b"etc/b.hard",
        b"etc/link",
        b"etc/sub",
        b"etc/sub/b.conf",
    ]
    a = scan.entries[b"etc/a.conf"]
    assert (a.kind, a.mode, a.uid, a.gid) == (Kind.FILE, 0o640, 1234, 5678)
    assert a.mtime_ns == 1_700_000_000_123_456_789
    assert (a.size, a.digest) == (6, xxhash.xxh3_128_digest(b"alpha\n"))
    assert a.xattrs == ((b"user.note", b"kept"),)
    link = scan.entries[b"etc/link"]
    assert (link.kind, link.target, link.digest) == (Kind.SYMLINK, b"sub/b.conf", b"")
    assert scan.entries[b"etc/sub"].kind == Kind.DIR


def test_a_scan_reports_what_it_leaves_out(tree: Path) -> None:
    scan = scan_tree(tree, SYNCSET)
    assert scan.unsupported == [b"etc/pipe"]
    assert scan.leftovers == [b"etc/" + TMP_PREFIX + b"123"]
    assert scan.missing_tops == [b"opt/absent"]
    assert scan.problems == []
    (names,) = scan.links.values()
    assert sorted(names) == [b"etc/b.hard", b"etc/sub/b.conf"]


def test_a_symlink_in_place_of_a_top_directory_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret").write_bytes(b"outside the root")
    (root / "etc").symlink_to(tmp_path / "elsewhere")
    scan = scan_tree(root, SyncSet.build(["/etc"], []))
    assert list(scan.entries) == [b"etc"]
    assert scan.entries[b"etc"].kind == Kind.SYMLINK


def test_a_changed_path_is_scanned_with_the_directories_above_it(tree: Path) -> None:
    fd = open_root(tree)
    try:
        one = scan_paths(fd, SYNCSET, {b"etc/sub/b.conf": False})
        assert sorted(one.entries) == [b"etc", b"etc/sub", b"etc/sub/b.conf"]
        shallow = scan_paths(fd, SYNCSET, {b"etc/sub": False})
        assert sorted(shallow.entries) == [b"etc", b"etc/sub"]
        deep = scan_paths(fd, SYNCSET, {b"etc/sub": True})
        assert sorted(deep.entries) == [b"etc", b"etc/sub", b"etc/sub/b.conf"]
        gone = scan_paths(fd, SYNCSET, {b"etc/never.conf": False, b"var/x": False})
        assert sorted(gone.entries) == [b"etc"]  # absent here; outside the set: ignored
        excluded = scan_paths(fd, SYNCSET, {b"etc/a.conf.swp": False})
        assert b"etc/a.conf.swp" not in excluded.entries
        assert scan_paths(fd, SYNCSET, {b"etc/pipe": False}).unsupported == [b"etc/pipe"]
    finally:
        os.close(fd)


def test_a_scan_past_max_entries_stops_and_names_the_limit(tree: Path) -> None:
    assert len(scan_tree(tree, SYNCSET, max_entries=6).entries) == 6
    with pytest.raises(TreeTooLarge, match=f"the sync set under {tree} holds more than 5 "):
        scan_tree(tree, SYNCSET, max_entries=5)
