"""Delta bases on disk: only the version the peer acknowledged is kept,
never a file that changed since; the store stays within its bound."""

from __future__ import annotations

import os
from pathlib import Path

from bmsync.core.delta import DELTA_MIN_BYTES
from bmsync.core.manifest import digest_bytes
from bmsync.fs.bases import BaseStore


def _copy_in(store: BaseStore, path: Path, digest: bytes) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return store.copy_in(digest, fd, path.stat().st_size)
    finally:
        os.close(fd)


def test_the_acknowledged_version_is_kept_and_given_back(tmp_path: Path) -> None:
    data = os.urandom(DELTA_MIN_BYTES * 3 + 17)
    source = tmp_path / "big.conf"
    source.write_bytes(data)
    store = BaseStore(tmp_path / "bases", 10 << 20)
    assert _copy_in(store, source, digest_bytes(data))
    # a new store (a daemon restart) finds it too
    assert BaseStore(tmp_path / "bases", 10 << 20).get(digest_bytes(data)) == data


def test_a_file_that_changed_since_it_was_acknowledged_is_not_kept(tmp_path: Path) -> None:
    acknowledged = os.urandom(DELTA_MIN_BYTES * 2)
    source = tmp_path / "big.conf"
    source.write_bytes(acknowledged[:-1] + b"!")  # edited after the peer took it
    store = BaseStore(tmp_path / "bases", 10 << 20)
    assert not _copy_in(store, source, digest_bytes(acknowledged))
    assert store.get(digest_bytes(acknowledged)) is None
    assert os.listdir(tmp_path / "bases") == []  # no temp file left behind


def test_the_least_recently_used_bases_go_first(tmp_path: Path) -> None:
    store = BaseStore(tmp_path / "bases", 3 * DELTA_MIN_BYTES)
    versions = [os.urandom(DELTA_MIN_BYTES) for _ in range(4)]
    for number, data in enumerate(versions):
        source = tmp_path / f"f{number}"
        source.write_bytes(data)
        assert _copy_in(store, source, digest_bytes(data))
        os.utime(tmp_path / "bases" / digest_bytes(data).hex(), (number, number))
        store = BaseStore(tmp_path / "bases", 3 * DELTA_MIN_BYTES)  # reads the times back
    kept = [store.get(digest_bytes(d)) is not None for d in versions]
    assert kept == [False, True, True, True]


def test_a_damaged_base_is_dropped_not_used(tmp_path: Path) -> None:
    data = os.urandom(DELTA_MIN_BYTES)
    source = tmp_path / "big.conf"
    source.write_bytes(data)
    store = BaseStore(tmp_path / "bases", 10 << 20)
    assert _copy_in(store, source, digest_bytes(data))
    kept = tmp_path / "bases" / digest_bytes(data).hex()
    kept.write_bytes(b"x" + data[1:])  # a bad sector, a stray edit
    assert store.get(digest_bytes(data)) is None
    assert not kept.exists()
