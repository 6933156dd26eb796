"""Epochs from a sender holding a leaked key: past the maximum they are
refused before anything is stored; within it they can still lock the real
active out, and `bmsync reset-epoch` on the passive node undoes that."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from bmsync.agent.receiver import Agent
from bmsync.agent.stdio import AgentConnection
from bmsync.core.codec import encode
from bmsync.core.frames import PROTOCOL_VERSION, ErrorFrame, Hello, Purpose, Refuse, Welcome
from bmsync.core.roles import MAX_EPOCH, NodeRole, RefusalCode, Role, Stamp
from bmsync.state.lock import LOCK_NAME
from bmsync.state.roles import RoleStore
from tests.integration.agent_harness import Node, raw_frame
from tests.integration.test_agent_roles import frames_of, read_frame
from tests.sshd import write_config


def hello(node: str, epoch: int) -> bytes:
    return encode(Hello(PROTOCOL_VERSION, node, Role.ACTIVE, epoch, Purpose.WRITE, "t"))


def session(node: Node, data: bytes) -> list[object]:
    """One more session with the same passive node."""
    agent = AgentConnection(Agent("bm2", node.root, node.syncset, node.state))
    try:
        return list(frames_of(agent.receive_data(data)))
    finally:
        agent.agent.close()


def test_a_hello_past_the_highest_epoch_is_refused_and_nothing_is_stored(node: Node) -> None:
    hostile = {
        "type": "hello",
        "version": PROTOCOL_VERSION,
        "node": "evil",
        "role": "active",
        "epoch": 2**64 - 1,
        "purpose": "write",
        "software": "x",
    }
    (reply,) = node.send_bytes(raw_frame(hostile))
    assert isinstance(reply, ErrorFrame)
    assert f"Hello epoch {2**64 - 1} is out of range (0 to {MAX_EPOCH})" in reply.message
    assert node.connection.finished and node.connection.exit_code == 4
    assert not (node.state / "role.json").exists()
    assert RoleStore(node.state, "bm2").load() == NodeRole("bm2")
    # the real active is not locked out
    (welcome,) = session(node, hello("bm1", 1))
    assert isinstance(welcome, Welcome) and (welcome.seen_epoch, welcome.seen_node) == (1, "bm1")


def bmsync(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bmsync", "-c", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_reset_epoch_ends_the_hostile_session_and_lets_the_real_active_back(node: Node) -> None:
    """The worst an in-range epoch can do: a sender with the leaked key,
    at MAX_EPOCH, writing here; the real active (epoch 3) then refused."""
    state = node.state
    conf = write_config(state.parent / "bm2.yaml", "bm2", node.root, state, promote=False)
    agent = subprocess.Popen(
        [sys.executable, "-m", "bmsync", "-c", str(conf), "agent"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert agent.stdin is not None and agent.stdout is not None
        agent.stdin.write(hello("evil", MAX_EPOCH))
        agent.stdin.flush()
        assert isinstance(read_frame(agent.stdout.fileno()), Welcome)
        assert RoleStore(state, "bm2").load().highest_seen == Stamp(MAX_EPOCH, "evil")
        (refusal,) = session(node, hello("bm1", 3))  # the real active is locked out
        assert isinstance(refusal, Refuse)
        assert (refusal.seen_epoch, refusal.seen_node) == (MAX_EPOCH, "evil")

        missing = bmsync(conf, "reset-epoch", "--to", "3", "--reason", " ")
        assert missing.returncode == 2 and "needs --reason" in missing.stderr

        done = bmsync(conf, "reset-epoch", "--to", "3", "--reason", "key of bm1 leaked")
        assert done.returncode == 0, done.stderr
        assert f"reset from epoch {MAX_EPOCH} (evil) to epoch 3" in done.stdout
        assert f"the writing session of evil epoch {MAX_EPOCH} (agent pid" in done.stdout
        assert "has ended" in done.stdout
        assert "epoch_reset" in done.stderr and "key of bm1 leaked" in done.stderr
        assert lock_is_free(state)  # the session ended before reset-epoch returned
        agent.wait(30)  # and its process exits
        refusal = read_frame(agent.stdout.fileno())
        assert isinstance(refusal, Refuse) and refusal.code == RefusalCode.EPOCH_RESET
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGKILL)
        agent.wait()

    record = json.loads((state / "role.json").read_text())
    assert record["highest_seen"] == {"epoch": 3, "node": ""}
    assert "reset-epoch" in record["changed"] and "key of bm1 leaked" in record["changed"]
    (welcome,) = session(node, hello("bm1", 3))
    assert isinstance(welcome, Welcome)
    again = bmsync(conf, "reset-epoch", "--to", "3", "--reason", "twice")
    assert again.returncode == 1 and "nothing changed" in again.stdout


def lock_is_free(state: Path) -> bool:
    fd = os.open(state / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_reset_epoch_refuses_an_active_node(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    conf = write_config(tmp_path / "bm1.yaml", "bm1", root, tmp_path / "state", promote=True)
    before = (tmp_path / "state" / "role.json").read_bytes()
    done = bmsync(conf, "reset-epoch", "--to", "0", "--reason", "test")
    assert done.returncode == 8
    assert "only runs on a passive node" in done.stderr and "bmsync demote" in done.stderr
    assert (tmp_path / "state" / "role.json").read_bytes() == before


def test_a_role_json_hit_before_epochs_were_checked_is_repaired(node: Node) -> None:
    """role.json as an unchecked bmsync left it on the old active: its
    epoch at 2**64 (promoted above the hostile 2**64 - 1)."""
    huge = 2**64
    (node.state / "role.json").write_text(
        json.dumps(
            {
                "node": "bm2",
                "role": "active",
                "epoch": huge,
                "highest_seen": {"epoch": huge, "node": "bm2"},
            }
        )
    )
    conf = write_config(node.state.parent / "bm2.yaml", "bm2", node.root, node.state)
    done = bmsync(conf, "promote")
    assert done.returncode == 8
    assert f"epoch {huge} is out of range" in done.stderr
    assert "bmsync reset-epoch --to EPOCH" in done.stderr
    # a sender is refused with the same remedy, not with a crash
    (refusal,) = session(node, hello("bm1", 1))
    assert isinstance(refusal, Refuse) and "bmsync reset-epoch" in refusal.reason

    assert bmsync(conf, "demote").returncode == 0
    done = bmsync(conf, "reset-epoch", "--to", "4", "--reason", "hit before the upgrade")
    assert done.returncode == 0, done.stderr
    done = bmsync(conf, "promote")
    assert done.returncode == 0, done.stderr
    assert RoleStore(node.state, "bm2").load().stamp == Stamp(5, "bm2")
