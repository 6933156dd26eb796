"""The agent on a real filesystem, fed raw frames as a hostile or broken
sender would: every bad input gets a clear answer and changes nothing."""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from bmsync.agent.bounds import MAX_BATCH_HELD_BYTES, MAX_BATCH_RECORDS
from bmsync.agent.stdio import FLUSH_BYTES, AgentConnection
from bmsync.core.codec import FrameDecoder, encode
from bmsync.core.delta import Copy, Literal, make_delta
from bmsync.core.excludes import Rule, SyncSet
from bmsync.core.frames import (
    BASE_MISMATCH,
    CHUNK_BYTES,
    PROTOCOL_VERSION,
    Applied,
    Commit,
    ErrorFrame,
    Expect,
    Fetch,
    Frame,
    Hello,
    ManifestPart,
    ManifestRequest,
    Purpose,
    Put,
    PutAbort,
    PutChunk,
    PutDelta,
    PutHole,
    Refuse,
    Welcome,
)
from bmsync.core.manifest import Entry, Kind, digest_bytes
from bmsync.core.ops import Delete, Mkdir, Rename, SetMeta
from bmsync.core.roles import Role
from bmsync.fs import staging as staging_module
from tests.helpers import walk
from tests.integration.agent_harness import DIR, Node, file_entry, raw_frame

ENTRY_RAW = [int(Kind.DIR), 0o755, 0, 0, 0, 0, b"", b"", []]


@pytest.mark.parametrize(
    ("path", "complaint"),
    [
        (b"../escape", "component b'..' not allowed"),
        (b"etc/../../escape", "component b'..' not allowed"),
        (b"/etc/absolute", "absolute path not allowed"),
        (b"etc/nul\x00byte", "NUL byte"),
        (b"etc//double", "component b'' not allowed"),
        (b"etc/" + b"x" * 256, "name longer than 255 bytes"),
    ],
)
def test_bad_paths_are_protocol_errors_and_write_nothing(
    node: Node, path: bytes, complaint: str
) -> None:
    node.hello()
    before = walk(node.root.parent)
    replies = node.send_bytes(raw_frame({"type": "mkdir", "path": path, "entry": ENTRY_RAW}))
    assert len(replies) == 1 and isinstance(replies[0], ErrorFrame)
    assert complaint in replies[0].message
    assert node.connection.finished and node.connection.exit_code == 4
    assert walk(node.root.parent) == before


def test_oversize_length_is_refused_before_reading_the_body(node: Node) -> None:
    node.hello()
    replies = node.send_bytes(struct.pack(">I", 2**31) + b"x" * 10)
    assert isinstance(replies[0], ErrorFrame)
    assert "exceeds the 8388608-byte limit" in replies[0].message


def test_garbage_and_unknown_frame_types(node: Node) -> None:
    replies = node.send_bytes(raw_frame({"type": "format-disk", "path": b"etc"}))
    assert isinstance(replies[0], ErrorFrame) and "malformed frame" in replies[0].message


def test_frames_before_hello_and_writes_in_a_read_session(tmp_path: Path) -> None:
    first = Node(tmp_path / "one")
    (reply,) = first.send(ManifestRequest())
    assert isinstance(reply, ErrorFrame) and "before Hello" in reply.message
    first.close()

    second = Node(tmp_path / "two")
    second.hello(Purpose.READ)
    (reply,) = second.send(Mkdir(b"etc/new", DIR))
    assert isinstance(reply, ErrorFrame) and "read-only" in reply.message
    assert not (second.root / "etc/new").exists()
    second.close()


def test_version_mismatch_is_refused_with_both_versions(node: Node) -> None:
    (reply,) = node.send(Hello(PROTOCOL_VERSION + 1, "bm1", Role.ACTIVE, 0, Purpose.WRITE, "9"))
    assert isinstance(reply, Refuse)
    assert f"protocol version {PROTOCOL_VERSION + 1}" in reply.reason
    assert "same bmsync version on both nodes" in reply.reason


def test_symlink_planted_in_a_parent_is_never_written_through(node: Node, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.conf").write_text("keep me\n")
    (node.root / "etc/conf.d").symlink_to(outside)
    node.hello()
    data = b"owned\n"
    applied = node.commit(
        Put(b"etc/conf.d/evil.conf", 0, data, file_entry(data)),
        Mkdir(b"etc/conf.d/sub", DIR),
        Delete(b"etc/conf.d/victim.conf", Kind.FILE),
        Rename(b"etc/conf.d/victim.conf", b"etc/stolen.conf", file_entry(b"keep me\n")),
    )
    reasons = {f.path: f.reason for f in applied.failures}
    assert set(reasons) == {
        b"etc/conf.d/evil.conf",
        b"etc/conf.d/sub",
        b"etc/conf.d/victim.conf",
        b"etc/stolen.conf",
    }
    assert all("refusing to write through it" in r for r in reasons.values())
    assert sorted(p.name for p in outside.iterdir()) == ["victim.conf"]
    assert (outside / "victim.conf").read_text() == "keep me\n"
    assert not (node.root / "etc/stolen.conf").exists()


def test_paths_outside_the_agents_own_sync_set_are_left_alone(node: Node) -> None:
    (node.root / "etc/hostname").write_text("bm2\n")
    (node.root / "var").mkdir()
    node.hello()
    applied = node.commit(
        Put(b"etc/hostname", 0, b"bm1\n", file_entry(b"bm1\n")),
        Delete(b"etc/hostname", Kind.FILE),
        Put(b"var/other", 0, b"x", file_entry(b"x")),
    )
    assert [f.path for f in applied.failures] == [b"etc/hostname", b"etc/hostname", b"var/other"]
    assert all("outside this node's sync set" in f.reason for f in applied.failures)
    assert (node.root / "etc/hostname").read_text() == "bm2\n"
    assert not (node.root / "var/other").exists()


def test_digest_mismatch_leaves_the_target_and_no_temp_file(node: Node) -> None:
    (node.root / "etc/app.conf").write_text("old\n")
    node.hello()
    applied = node.commit(Put(b"etc/app.conf", 0, b"new\n", file_entry(b"NEW\n")))
    assert applied.failures[0].path == b"etc/app.conf"
    assert "the sender announced" in applied.failures[0].reason
    assert (node.root / "etc/app.conf").read_text() == "old\n"
    assert os.listdir(node.root / "etc") == ["app.conf"]


def test_chunked_file_with_metadata_and_a_gap_in_offsets(node: Node) -> None:
    data = os.urandom(CHUNK_BYTES * 2 + 17)
    node.hello()
    entry = Entry(Kind.FILE, 0o4750, 1234, 5678, 1_600_000_000_000_000_001, len(data),
                  digest_bytes(data), xattrs=((b"user.origin", b"bm1"),))  # fmt: skip
    applied = node.commit(
        PutChunk(b"etc/big.db", 0, data[:CHUNK_BYTES]),
        PutChunk(b"etc/big.db", CHUNK_BYTES, data[CHUNK_BYTES : 2 * CHUNK_BYTES]),
        Put(b"etc/big.db", 2 * CHUNK_BYTES, data[2 * CHUNK_BYTES :], entry),
    )
    assert applied.failures == []
    assert applied.results == [(b"etc/big.db", entry)]
    target = node.root / "etc/big.db"
    assert target.read_bytes() == data
    st = target.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o4750, 1234, 5678)
    assert st.st_mtime_ns == 1_600_000_000_000_000_001
    assert os.getxattr(target, "user.origin") == b"bm1"

    (reply,) = node.send(PutChunk(b"etc/other", 0, b"abc"), PutChunk(b"etc/other", 10, b"def"))
    assert isinstance(reply, ErrorFrame) and "expected 3" in reply.message


def test_session_cut_mid_batch_leaves_no_trace(node: Node) -> None:
    (node.root / "etc/app.conf").write_text("old\n")
    node.hello()
    assert node.send(PutChunk(b"etc/app.conf", 0, b"half of the new")) == []
    assert len(os.listdir(node.root / "etc")) == 2  # the staged temp file
    node.close()  # the link dropped before Commit
    assert os.listdir(node.root / "etc") == ["app.conf"]
    assert (node.root / "etc/app.conf").read_text() == "old\n"


def test_non_empty_directory_holding_excluded_files_is_kept(node: Node) -> None:
    (node.root / "etc/old.d").mkdir()
    (node.root / "etc/old.d/x.swp").write_text("vim\n")
    node.connection.agent.syncset = SyncSet.build(["/etc"], [Rule("*.swp")])
    node.hello()
    applied = node.commit(Delete(b"etc/old.d", Kind.DIR))
    assert "holds paths this node does not sync" in applied.failures[0].reason
    assert (node.root / "etc/old.d/x.swp").exists()


def test_manifest_answer_covers_only_the_sync_set(node: Node) -> None:
    (node.root / "etc/hostname").write_text("bm2\n")
    (node.root / "etc/a.conf").write_text("a\n")
    (node.root / "other").mkdir()
    node.hello(Purpose.READ)
    (part,) = node.send(ManifestRequest())
    assert isinstance(part, ManifestPart) and part.last
    assert [p for p, _ in part.entries] == [b"etc", b"etc/a.conf"]
    assert dict(part.entries)[b"etc/a.conf"].digest == digest_bytes(b"a\n")


def test_unreadable_root_is_reported_to_the_sender(node: Node) -> None:
    node.hello(Purpose.READ)
    (node.root / "etc").rmdir()
    node.root.rmdir()  # e.g. the filesystem holding it went away
    (reply,) = node.send(ManifestRequest())
    assert isinstance(reply, ErrorFrame)
    assert f"cannot open sync root {node.root}" in reply.message
    assert node.connection.finished and node.connection.exit_code == 7


def test_delta_applies_to_its_base_only(node: Node) -> None:
    base = b"line\n" * 20_000
    new = base.replace(b"line\n", b"LINE\n", 1)
    target = node.root / "etc/big.conf"
    target.write_bytes(base)
    node.hello()
    delta = PutDelta(b"etc/big.conf", digest_bytes(base), make_delta(base, new), file_entry(new))
    applied = node.commit(delta)
    assert applied.failures == []
    assert target.read_bytes() == new

    # the file is no longer that base: refused with the code that asks for it whole
    applied = node.commit(delta)
    assert [(f.path, f.code) for f in applied.failures] == [(b"etc/big.conf", BASE_MISMATCH)]
    assert dict(applied.results)[b"etc/big.conf"] is not None  # what is here instead
    assert target.read_bytes() == new

    # a delta whose result is not what its entry says is not applied
    wrong = PutDelta(b"etc/big.conf", digest_bytes(new), [Literal(b"x")], file_entry(b"y"))
    applied = node.commit(wrong)
    assert "the sender announced" in applied.failures[0].reason
    assert target.read_bytes() == new
    bad = PutDelta(b"etc/big.conf", digest_bytes(new), [Copy(0, 10**9)], file_entry(b"y"))
    applied = node.commit(bad)
    assert "bad delta: copy of 0+1000000000 past the base" in applied.failures[0].reason
    assert os.listdir(node.root / "etc") == ["big.conf"]


def test_a_delta_builds_no_more_than_the_size_it_declares(node: Node) -> None:
    base = b"line\n" * 20_000
    target = node.root / "etc/big.conf"
    target.write_bytes(base)
    node.hello()
    # 100 MB of zeros in 100 KB: inflated only as far as the declared 1000 bytes
    bomb = Literal(zlib.compress(bytes(100_000_000), 9), compressed=True)
    applied = node.commit(
        PutDelta(b"etc/big.conf", digest_bytes(base), [bomb], file_entry(b"y" * 1000))
    )
    assert [f.reason for f in applied.failures] == [
        "bad delta: literal data inflates past 1000 bytes (the room left in a result of at "
        "most 1000)"
    ]
    # copies that would build more than the declared size are not made
    copies = [Copy(0, 100_000)] * 3
    applied = node.commit(
        PutDelta(b"etc/big.conf", digest_bytes(base), copies, file_entry(b"z" * 150_000))
    )
    assert [f.reason for f in applied.failures] == ["bad delta: the result grows past 150000 bytes"]
    assert target.read_bytes() == base
    assert os.listdir(node.root / "etc") == ["big.conf"]  # no temporary file left


def test_a_delta_is_not_applied_to_a_base_too_large_to_be_one(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = b"line\n" * 20_000
    (node.root / "etc/big.conf").write_bytes(base)
    monkeypatch.setattr(staging_module, "DELTA_MAX_BYTES", len(base) - 1)
    node.hello()
    delta = PutDelta(b"etc/big.conf", digest_bytes(base), [Copy(0, 10)], file_entry(base[:10]))
    applied = node.commit(delta)
    assert [f.code for f in applied.failures] == [BASE_MISMATCH]
    assert (node.root / "etc/big.conf").read_bytes() == base


# -- what a batch keeps until its commit is bounded ---------------------------


def test_expectations_without_a_commit_end_the_session_past_the_bound(node: Node) -> None:
    node.hello()
    expects = [Expect(b"etc/f%05d" % i, b"\1" * 16) for i in range(MAX_BATCH_RECORDS + 1)]
    replies = node.send(*expects[:-1])
    assert replies == []  # up to the bound: kept, waiting for the commit
    (reply,) = node.send(expects[-1])
    assert isinstance(reply, ErrorFrame)
    assert reply.message == (
        f"more than {MAX_BATCH_RECORDS} operations and Expect frames in one batch "
        f"without a Commit (at Expect /etc/f{MAX_BATCH_RECORDS:05})"
    )
    assert node.connection.finished and node.connection.exit_code == 4


def long_path(i: int) -> bytes:
    return b"etc/" + b"/".join([b"%05d" % i + b"x" * 240] + [b"y" * 250] * 14)


@pytest.mark.parametrize(
    "frame",
    [
        lambda i: Expect(long_path(i), b"\1" * 16),
        lambda i: Delete(long_path(i), Kind.FILE),  # each a Failure: no parent here
        lambda i: SetMeta(  # directory metadata waits for the commit
            b"etc", Entry(Kind.DIR, 0o755, 0, 0, 0, xattrs=((b"user.x", b"v" * 3000),))
        ),
    ],
)
def test_what_a_batch_keeps_until_its_commit_is_bounded_in_bytes(
    node: Node, frame: Callable[[int], Frame]
) -> None:
    node.hello()
    frames = [frame(i) for i in range(MAX_BATCH_HELD_BYTES // 3000)]
    replies = node.send(*frames)
    assert isinstance(replies[-1], ErrorFrame), replies[-3:]
    assert f"would keep more than {MAX_BATCH_HELD_BYTES} bytes until its Commit" in (
        replies[-1].message
    )
    assert node.connection.finished and node.connection.exit_code == 4
    assert os.listdir(node.root / "etc") == []


def test_the_largest_batch_a_sender_makes_is_well_within_the_bounds(node: Node) -> None:
    """1000 files (session.BATCH_MAX_OPS) with 200-byte paths, an xattr
    the size of an ACL, an Expect each, and every file read three times
    (changing while read): at most half of either bound."""
    where = b"etc/" + b"d" * 150
    (node.root / os.fsdecode(where)).mkdir()
    node.hello()
    acl = ((b"user.acl_like", b"a" * 44),)  # an ACL's size
    frames: list[Frame] = []
    for i in range(1000):
        path = where + b"/%044d" % i
        data = b"%d\n" % i
        entry = Entry(Kind.FILE, 0o644, 0, 0, 0, len(data), digest_bytes(data), xattrs=acl)
        frames += [Expect(path, b"\1" * 16)]
        frames += [PutChunk(path, 0, b"x"), PutAbort(path)] * 2
        frames += [PutChunk(path, 0, data[:1]), Put(path, 1, data[1:], entry)]
    batch = node.connection.agent._bounds
    node.send(*frames)
    assert batch.records < MAX_BATCH_RECORDS / 2 and batch.held_bytes < MAX_BATCH_HELD_BYTES / 2
    applied = node.commit()
    assert applied.failures == [] and len(applied.results) == 1000


def test_replies_are_sent_as_they_come_and_never_under_the_role_lock(node: Node) -> None:
    """A Fetch of a file of any size is sent a chunk at a time, and the
    replies of many frames once a megabyte of them waits; the sender may not
    read them for a while, so the role lock (which promote waits for) is
    never held while they are written."""
    # written, not a hole (a sparse file's holes travel as PutHole)
    (node.root / "etc/big.img").write_bytes(b"\xa5" * (20 * CHUNK_BYTES + 5))
    sent: list[bytes] = []

    def send(data: bytes) -> None:
        assert len(data) <= FLUSH_BYTES + CHUNK_BYTES + 1024
        fd = os.open(node.state / "role.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: not held
        finally:
            os.close(fd)
        sent.append(data)

    connection = AgentConnection(node.connection.agent, send)
    hello = Hello(PROTOCOL_VERSION, "bm1", Role.ACTIVE, 0, Purpose.WRITE, "test")
    frames = [hello, Mkdir(b"etc/new", DIR), Fetch(b"etc/big.img"), Commit(1)]
    frames += [Commit(n) for n in range(2, 40_000)]  # 40,000 small answers
    assert connection.receive_data(b"".join(encode(f) for f in frames)) == b""
    decoder = FrameDecoder()
    decoder.feed(b"".join(sent))
    replies = []
    while (frame := decoder.next_frame()) is not None:
        replies.append(frame)
    assert [type(r) for r in replies[:23]] == [Welcome, *[PutChunk] * 20, Put, Applied]
    assert sum(len(r.data) for r in replies[1:22]) == 20 * CHUNK_BYTES + 5
    assert [r.batch for r in replies[22:]] == list(range(1, 40_000))
    assert len(sent) > 20 and (node.root / "etc/new").is_dir()


# -- a file changed on this (passive) node since bmsync wrote it -------------


def test_a_file_changed_here_is_kept_before_it_is_replaced(node: Node) -> None:
    node.hello()
    target = node.root / "etc" / "app.conf"
    target.write_bytes(b"port 9999  # edited by hand on the passive\n")
    os.chmod(target, 0o640)
    written_by_bmsync = digest_bytes(b"port 8080\n")
    applied = node.commit(
        Expect(b"etc/app.conf", written_by_bmsync),
        Put(b"etc/app.conf", 0, b"port 8081\n", file_entry(b"port 8081\n")),
    )
    assert target.read_bytes() == b"port 8081\n"
    ((path, kept),) = applied.backups
    assert path == b"etc/app.conf"
    copy = Path(kept)
    assert copy.is_relative_to(node.state / "backups")
    assert copy.read_bytes() == b"port 9999  # edited by hand on the passive\n"
    assert copy.stat().st_mode & 0o7777 == 0o640


def test_the_version_bmsync_wrote_is_replaced_without_a_copy(node: Node) -> None:
    node.hello()
    (node.root / "etc" / "app.conf").write_bytes(b"port 8080\n")
    applied = node.commit(
        Expect(b"etc/app.conf", digest_bytes(b"port 8080\n")),
        Put(b"etc/app.conf", 0, b"port 8081\n", file_entry(b"port 8081\n")),
        Expect(b"etc/new.conf", b""),  # bmsync wrote nothing there, and nothing is there
        Put(b"etc/new.conf", 0, b"new\n", file_entry(b"new\n")),
    )
    assert applied.backups == [] and applied.failures == []
    assert not (node.state / "backups").exists()


def test_files_created_or_changed_here_are_kept_before_a_delete(node: Node) -> None:
    node.hello()
    (node.root / "etc" / "stray.conf").write_bytes(b"made on the passive\n")
    (node.root / "etc" / "old.conf").write_bytes(b"as bmsync wrote it\n")
    applied = node.commit(
        Expect(b"etc/stray.conf", b""),  # bmsync never wrote this one
        Delete(b"etc/stray.conf", Kind.FILE),
        Expect(b"etc/old.conf", digest_bytes(b"as bmsync wrote it\n")),
        Delete(b"etc/old.conf", Kind.FILE),
    )
    assert not (node.root / "etc" / "stray.conf").exists()
    assert not (node.root / "etc" / "old.conf").exists()
    assert [p for p, _ in applied.backups] == [b"etc/stray.conf"]
    assert Path(applied.backups[0][1]).read_bytes() == b"made on the passive\n"


def test_holes_are_left_unwritten_and_count_in_the_digest(node: Node) -> None:
    node.hello()
    size = 64 << 20
    content = b"head" + bytes((32 << 20) - 4) + b"mid" + bytes(size - (32 << 20) - 3)
    entry = file_entry(content)
    applied = node.commit(
        PutChunk(b"etc/sparse.img", 0, b"head"),
        PutHole(b"etc/sparse.img", 4, (32 << 20) - 4),
        PutChunk(b"etc/sparse.img", 32 << 20, b"mid"),
        PutHole(b"etc/sparse.img", (32 << 20) + 3, size - (32 << 20) - 3),
        Put(b"etc/sparse.img", size, b"", entry),
    )
    assert applied.failures == []
    placed = node.root / "etc/sparse.img"
    assert placed.stat().st_size == size and placed.stat().st_blocks * 512 < 1 << 20
    assert placed.read_bytes() == content
    # a hole that does not start where the file is: a protocol error, nothing applied
    (reply,) = node.send(PutHole(b"etc/other.img", 5, 10))
    assert isinstance(reply, ErrorFrame) and "without its start" in reply.message
