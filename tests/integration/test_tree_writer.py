"""The tree writer on its own, as ``resume --discard`` uses it (no agent, no
handshake): operations and file frames into a root, confined to its sync
set, nothing of a file visible before the commit."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bmsync.core.excludes import Rule, SyncSet
from bmsync.core.frames import Put, PutChunk
from bmsync.core.manifest import Entry, Kind, digest_bytes
from bmsync.core.ops import Delete, Mkdir, SetMeta, Symlink
from bmsync.fs.confine import Confined
from bmsync.fs.files import open_root
from bmsync.fs.tree_writer import TreeWriter
from bmsync.link.outbox import file_frames

MTIME = 1_700_000_000_123_456_789


def file_entry(data: bytes) -> Entry:
    return Entry(Kind.FILE, 0o640, 0, 0, MTIME, len(data), digest_bytes(data))


@pytest.fixture
def where(tmp_path: Path) -> Iterator[Confined]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    confined = Confined(root, SyncSet.build(["/etc"], [Rule("/etc/hostname")]))
    yield confined
    confined.close()


def test_a_batch_of_operations_and_files_appears_at_its_commit(
    where: Confined, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    (source / "etc").mkdir(parents=True)
    (source / "etc/app.conf").write_bytes(b"x" * 3_000_000)
    source_fd = open_root(source)
    writer = TreeWriter(where)
    try:
        writer.apply(Mkdir(b"etc/app.d", Entry(Kind.DIR, 0o750, 0, 0, MTIME)))
        writer.apply(
            Symlink(
                b"etc/app.d/current", Entry(Kind.SYMLINK, 0o777, 0, 0, 0, 0, b"", b"../app.conf")
            )
        )
        for frame in file_frames(source_fd, b"etc/app.conf"):
            writer.receive(frame)
        assert not (where.root / "etc/app.conf").exists()  # staged, not placed
        applied = writer.commit(3)
    finally:
        writer.drop()
        os.close(source_fd)
    assert applied.batch == 3 and applied.failures == [] and applied.backups == []
    assert sorted(p for p, _ in applied.results) == [
        b"etc/app.conf",
        b"etc/app.d",
        b"etc/app.d/current",
    ]
    assert (where.root / "etc/app.conf").read_bytes() == b"x" * 3_000_000
    assert os.readlink(where.root / "etc/app.d/current") == "../app.conf"
    assert sorted(os.listdir(where.root / "etc")) == ["app.conf", "app.d"]  # no temp file


def test_what_the_sync_set_excludes_or_a_symlink_leads_to_is_a_failure(
    where: Confined, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (where.root / "etc/link").symlink_to(outside)
    data = b"bm1\n"
    writer = TreeWriter(where)
    writer.receive(Put(b"etc/hostname", 0, data, file_entry(data)))
    writer.receive(Put(b"etc/link/planted", 0, data, file_entry(data)))
    writer.apply(Delete(b"etc/link/x", Kind.FILE))
    writer.apply(SetMeta(b"usr/other", file_entry(data)))
    applied = writer.commit(1)
    reasons = {f.path: f.reason for f in applied.failures}
    assert "outside this node's sync set" in reasons[b"etc/hostname"]
    assert "symlink or not a directory" in reasons[b"etc/link/planted"]
    assert "symlink or not a directory" in reasons[b"etc/link/x"]
    assert "outside this node's sync set" in reasons[b"usr/other"]
    assert os.listdir(outside) == [] and not (where.root / "etc/hostname").exists()


def test_a_dropped_batch_leaves_nothing(where: Confined) -> None:
    (where.root / "etc/app.conf").write_text("old\n")
    writer = TreeWriter(where)
    writer.receive(PutChunk(b"etc/app.conf", 0, b"half of the new"))
    assert len(os.listdir(where.root / "etc")) == 2  # the staged temp file
    writer.drop()
    assert os.listdir(where.root / "etc") == ["app.conf"]
    assert (where.root / "etc/app.conf").read_text() == "old\n"
