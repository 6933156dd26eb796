"""The passive node's filesystem failing under the agent (read-only, full):
every failure is reported per path, the agent always answers, and nothing
the passive node holds is lost. Real filesystems: a small ext4 image on a
loop device."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bmsync.agent.receiver import Agent
from bmsync.agent.stdio import AgentConnection
from bmsync.core.frames import (
    PROTOCOL_VERSION,
    Applied,
    Commit,
    ErrorFrame,
    Expect,
    Hello,
    ManifestPart,
    ManifestRequest,
    Purpose,
    Put,
    Refuse,
)
from bmsync.core.manifest import Kind, digest_bytes
from bmsync.core.ops import Delete, Mkdir
from bmsync.core.roles import Role
from tests.integration.agent_harness import DIR, Node, file_entry
from tests.integration.conftest import Pair
from tests.loopfs import LoopFs, loop_ext4, needs_loop_devices

pytestmark = needs_loop_devices()

LEFTOVER = ".bmsync-tmp.0123456789abcdef"


def temp_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".bmsync-tmp.*"))


@pytest.fixture
def passive_etc(pair: Pair) -> Iterator[LoopFs]:
    """The passive node's /etc on a filesystem of its own."""
    (pair.passive / "etc").mkdir()
    with loop_ext4(pair.base / "etc.img", pair.passive / "etc") as fs:
        yield fs


def test_read_only_passive_with_a_leftover_answers_and_converges_once_writable(
    pair: Pair, passive_etc: LoopFs
) -> None:
    (pair.active / "etc").mkdir()
    (pair.active / "etc/app.conf").write_text("from the active node\n")
    (pair.passive / "etc" / LEFTOVER).write_bytes(b"left by a killed agent")
    passive_etc.read_only()

    done = pair.bmsync("resync")
    # the agent answered: each path it could not write is listed, and why
    assert done.returncode == 6, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "/etc/app.conf: Read-only file system" in done.stdout + done.stderr
    assert temp_files(pair.passive) == [f"etc/{LEFTOVER}"]  # could not be removed: left

    passive_etc.read_write()
    done = pair.bmsync("resync")
    assert done.returncode == 0, done.stdout + done.stderr
    assert pair.bmsync("verify").returncode == 0
    assert temp_files(pair.passive) == []
    assert (pair.passive / "etc/app.conf").read_text() == "from the active node\n"


@pytest.fixture
def ro_node(tmp_path: Path) -> Iterator[tuple[Node, LoopFs]]:
    """A Node whose etc/ is a filesystem of its own."""
    node = Node(tmp_path)
    try:
        with loop_ext4(tmp_path / "etc.img", node.root / "etc") as fs:
            try:
                yield node, fs
            finally:
                node.close()  # before the unmount: the agent holds descriptors
    finally:
        node.close()


def new_session(node: Node) -> None:
    """The next session of the same passive node (a new agent process)."""
    node.close()
    node.connection = AgentConnection(Agent("bm2", node.root, node.syncset, node.state))


def test_filesystem_read_only_between_staging_and_commit(ro_node: tuple[Node, LoopFs]) -> None:
    node, fs = ro_node
    (node.root / "etc/kept.conf").write_text("old\n")
    node.hello()
    new, kept = b"new file\n", b"replaced\n"
    staging = node.send(
        Put(b"etc/new.conf", 0, new, file_entry(new)),
        Put(b"etc/kept.conf", 0, kept, file_entry(kept)),
    )
    assert staging == []
    staged = temp_files(node.root)
    assert len(staged) == 2
    fs.read_only()

    (applied,) = node.send(Commit(1))
    assert isinstance(applied, Applied)
    reasons = {f.path: f.reason for f in applied.failures}
    assert reasons == {
        b"etc/new.conf": "Read-only file system",
        b"etc/kept.conf": "Read-only file system",
    }
    assert not node.connection.finished
    assert (node.root / "etc/kept.conf").read_text() == "old\n"
    assert not (node.root / "etc/new.conf").exists()
    assert temp_files(node.root) == staged  # cannot be removed on a read-only filesystem

    # writable again: the next writing session removes them and applies the batch
    fs.read_write()
    new_session(node)
    node.hello()
    (manifest,) = node.send(ManifestRequest())
    assert isinstance(manifest, ManifestPart)
    assert temp_files(node.root) == []
    applied = node.commit(
        Put(b"etc/new.conf", 0, new, file_entry(new)),
        Put(b"etc/kept.conf", 0, kept, file_entry(kept)),
    )
    assert applied.failures == []
    assert (node.root / "etc/new.conf").read_bytes() == new
    assert (node.root / "etc/kept.conf").read_bytes() == kept


def test_read_only_state_dir_refuses_the_sender_with_the_reason(tmp_path: Path) -> None:
    """The whole passive node read-only, its state_dir too (no lock, no
    role.json to record the sender in): refused with the reason, no
    traceback; accepted again once writable."""
    mounted = tmp_path / "fs"
    mounted.mkdir()
    with loop_ext4(tmp_path / "node.img", mounted) as fs:
        node = Node(mounted)
        try:
            node.hello()  # role.json, the locks: all there already
            new_session(node)
            fs.read_only()
            (refusal,) = node.send(
                Hello(PROTOCOL_VERSION, "bm1", Role.ACTIVE, 0, Purpose.WRITE, "test")
            )
            assert isinstance(refusal, Refuse)
            assert f"cannot write this node's state directory {node.state}" in refusal.reason
            assert "Read-only file system" in refusal.reason

            fs.read_write()
            new_session(node)
            node.hello()
            assert node.commit(Mkdir(b"etc/new", DIR)).failures == []
            assert (node.root / "etc/new").is_dir()
        finally:
            node.close()


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Files the test makes immutable (chattr +i), made mutable again after."""
    made: list[Path] = []
    yield made
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=True, timeout=30)


def test_state_dir_failing_mid_session_ends_it_with_the_reason(
    tmp_path: Path, immutable: list[Path]
) -> None:
    """Not one path's failure: the role lock (in state_dir) cannot be
    opened for the next write. The sender is told why; no traceback."""
    node = Node(tmp_path)
    try:
        node.hello()
        lock = node.state / "role.lock"
        subprocess.run(["chattr", "+i", str(lock)], check=True, timeout=30)
        immutable.append(lock)
        (reply,) = node.send(Mkdir(b"etc/new", DIR))
        assert isinstance(reply, ErrorFrame)
        assert "the agent failed on its own filesystem" in reply.message
        assert "Operation not permitted" in reply.message and str(node.state) in reply.message
        assert node.connection.finished and node.connection.exit_code == 7
        assert not (node.root / "etc/new").exists()
    finally:
        node.close()


# -- the copy kept of a file changed here cannot be written ------------------


@pytest.fixture
def full_backups(tmp_path: Path) -> Iterator[Node]:
    """A Node whose state_dir/backups is a 64 KiB tmpfs: a copy of a larger
    file runs out of space halfway."""
    node = Node(tmp_path)
    backups = node.state / "backups"
    backups.mkdir(mode=0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "bmsync-test", str(backups)],
        check=True,
        timeout=30,
    )
    try:
        yield node
    finally:
        node.close()
        subprocess.run(["umount", str(backups)], check=True, timeout=30)


def test_a_failed_backup_copy_leaves_no_partial_file_and_keeps_the_file(
    full_backups: Node,
) -> None:
    node = full_backups
    edited = b"edited by hand on the passive\n" * 10_000  # 300 KB: more than fits
    (node.root / "etc/big.conf").write_bytes(edited)
    (node.root / "etc/stray.conf").write_bytes(edited)
    node.hello()
    applied = node.commit(
        Expect(b"etc/big.conf", digest_bytes(b"what bmsync wrote\n")),
        Put(b"etc/big.conf", 0, b"new\n", file_entry(b"new\n")),
        Expect(b"etc/stray.conf", b""),
        Delete(b"etc/stray.conf", Kind.FILE),
    )
    # the passive node's version is still there, and no partial copy anywhere
    assert (node.root / "etc/big.conf").read_bytes() == edited
    assert (node.root / "etc/stray.conf").read_bytes() == edited
    assert list((node.state / "backups").rglob("*")) == []
    assert temp_files(node.root) == []
    reasons = {f.path: f.reason for f in applied.failures}
    assert set(reasons) == {b"etc/big.conf", b"etc/stray.conf"}
    for path, verb in ((b"etc/big.conf", "replaced"), (b"etc/stray.conf", "deleted")):
        assert "changed on this node" in reasons[path]
        assert "No space left on device" in reasons[path]
        assert f"not {verb}" in reasons[path]
        assert str(node.state / "backups") in reasons[path]
    assert applied.backups == []

    # with room for the copy, the same batch keeps it and applies
    subprocess.run(["mount", "-o", "remount,size=2m", str(node.state / "backups")], check=True)
    applied = node.commit(
        Expect(b"etc/big.conf", digest_bytes(b"what bmsync wrote\n")),
        Put(b"etc/big.conf", 0, b"new\n", file_entry(b"new\n")),
    )
    assert applied.failures == []
    ((path, kept),) = applied.backups
    assert Path(kept).read_bytes() == edited
    assert (node.root / "etc/big.conf").read_bytes() == b"new\n"
