"""state_dir/operation.lock (bmsync.state.operation): one HA operation at
a time on a node; whoever finds it taken is told who holds it; the kernel
lets it go when its holder dies, however it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bmsync.core.errors import HaRefused
from bmsync.state.operation import LOCK_NAME, OperationLock


@pytest.fixture
def held(tmp_path: Path) -> Iterator[OperationLock]:
    lock = OperationLock(tmp_path)
    lock.acquire("a switchover run here")
    try:
        yield lock
    finally:
        lock.release()


def test_a_second_acquire_is_refused_naming_the_holder(tmp_path: Path, held: OperationLock) -> None:
    with pytest.raises(HaRefused) as caught:
        OperationLock(tmp_path).acquire("steps asked by bm1")
    said = str(caught.value)
    assert "another HA operation runs on this node" in said
    assert f"(a switchover run here, pid {os.getpid()}, since " in said
    assert "'bmsync ha status'" in said and "then retry" in said
    assert caught.value.exit_code == 10


def test_the_file_says_who_holds_it(tmp_path: Path, held: OperationLock) -> None:
    text = (tmp_path / LOCK_NAME).read_text()
    assert text.startswith(f"a switchover run here, pid {os.getpid()}, since 20")
    assert (tmp_path / LOCK_NAME).stat().st_mode & 0o777 == 0o600


def test_release_lets_it_be_taken_again(tmp_path: Path) -> None:
    first, second = OperationLock(tmp_path), OperationLock(tmp_path)
    first.acquire("first")
    first.release()
    assert (tmp_path / LOCK_NAME).read_text() == ""
    second.acquire("second")
    try:
        with pytest.raises(HaRefused, match=r"\(second, pid "):
            first.acquire("first again")
    finally:
        second.release()
    first.acquire("first again")
    first.release()
    first.release()  # twice: harmless


def test_a_refused_acquire_does_not_disturb_the_holder(tmp_path: Path, held: OperationLock) -> None:
    before = (tmp_path / LOCK_NAME).read_text()
    other = OperationLock(tmp_path)
    for _ in range(3):
        with pytest.raises(HaRefused):
            other.acquire("other")
    other.release()  # never held: changes nothing
    assert (tmp_path / LOCK_NAME).read_text() == before
    with pytest.raises(HaRefused, match="a switchover run here"):
        OperationLock(tmp_path).acquire("other")


def test_an_empty_lock_file_names_an_unknown_holder(tmp_path: Path) -> None:
    # a holder killed between taking the lock and writing who it is
    (tmp_path / LOCK_NAME).write_text("")
    child = holder(tmp_path, write=False)
    try:
        with pytest.raises(HaRefused, match=r"runs on this node \(unknown\)"):
            OperationLock(tmp_path).acquire("here")
    finally:
        kill(child)


HOLD = """
import fcntl, os, sys
from pathlib import Path
from bmsync.state.operation import LOCK_NAME, OperationLock
state = Path(sys.argv[1])
if sys.argv[2] == "write":
    OperationLock(state).acquire("a switchover run by a child")
else:
    fd = os.open(state / LOCK_NAME, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("held", flush=True)
sys.stdin.read()
"""


def holder(state: Path, *, write: bool = True) -> subprocess.Popen[str]:
    """A child process holding the lock (it says so before returning)."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(state), "write" if write else "bare"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "held\n"
    return child


def kill(child: subprocess.Popen[str]) -> int:
    """SIGKILL the child, by its pid: no chance to release anything."""
    os.kill(child.pid, signal.SIGKILL)
    code = child.wait(timeout=30)
    for pipe in (child.stdin, child.stdout):
        assert pipe is not None
        pipe.close()
    return code


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    child = holder(tmp_path)
    try:
        with pytest.raises(HaRefused) as caught:
            OperationLock(tmp_path).acquire("here")
        assert f"a switchover run by a child, pid {child.pid}" in str(caught.value)
    finally:
        assert kill(child) == -signal.SIGKILL
    lock = OperationLock(tmp_path)
    lock.acquire("here, after the child died")
    try:
        assert (
            (tmp_path / LOCK_NAME)
            .read_text()
            .startswith(f"here, after the child died, pid {os.getpid()}")
        )
    finally:
        lock.release()


def test_a_lock_held_here_is_not_inherited_by_a_child(tmp_path: Path, held: OperationLock) -> None:
    # O_CLOEXEC: a command a step runs (ha.services.start, say) does not keep
    # the node's operation lock after the operation ends
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        held.release()
        again = OperationLock(tmp_path)
        again.acquire("after release, the child still running")
        again.release()
    finally:
        assert sleeper.stdin is not None
        sleeper.stdin.close()
        sleeper.wait(timeout=30)
