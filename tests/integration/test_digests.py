"""The digest cache: unchanged files are not read again; a change, even a
same-size rewrite with the old mtime put back, always is."""

from __future__ import annotations

import os
from pathlib import Path

from bmsync.fs.digests import RACY_NS, DigestCache
from bmsync.fs.scan import scan_tree
from tests.helpers import whole_root


def test_unchanged_files_come_from_the_cache(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    (root / "etc").mkdir(parents=True)
    state.mkdir()
    conf = root / "etc" / "app.conf"
    conf.write_text("port 8080\n")
    old = conf.stat()
    # pretend the file was last changed long ago (not racy)
    later = lambda: old.st_ctime_ns + 10 * RACY_NS  # noqa: E731

    first = scan_tree(root, whole_root(), DigestCache(state, clock_ns=later))
    cache = DigestCache(state, clock_ns=later)
    second = scan_tree(root, whole_root(), cache)
    assert second.entries == first.entries
    assert (cache.hits, cache.misses) == (1, 0)

    conf.write_text("port 8081\n")  # same size
    os.utime(conf, ns=(old.st_atime_ns, old.st_mtime_ns))  # same mtime
    cache = DigestCache(state, clock_ns=later)
    third = scan_tree(root, whole_root(), cache)
    assert (cache.hits, cache.misses) == (0, 1)
    assert third.entries[b"etc/app.conf"].digest != first.entries[b"etc/app.conf"].digest


def test_a_file_changed_just_before_it_was_hashed_is_not_trusted(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    (root / "etc").mkdir(parents=True)
    state.mkdir()
    (root / "etc" / "fresh.conf").write_text("still being edited\n")
    scan_tree(root, whole_root(), DigestCache(state))  # the real clock: racy
    cache = DigestCache(state)
    scan_tree(root, whole_root(), cache)
    assert cache.hits == 0 and cache.misses == 1


def test_a_damaged_cache_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "digests").write_bytes(b"\xc1garbage")
    cache = DigestCache(tmp_path)
    assert cache.lookup(b"etc/x", os.stat(tmp_path)) is None
