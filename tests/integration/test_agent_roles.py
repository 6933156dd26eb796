"""Every write is judged against this node's role as it is when the write
happens, not only at the handshake: a promotion here, or a higher stamp
seen by another session, ends the writing session, and nothing of it is
applied afterwards."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

from bmsync.agent.receiver import Agent
from bmsync.agent.stdio import AgentConnection
from bmsync.core.codec import FrameDecoder, encode
from bmsync.core.frames import PROTOCOL_VERSION, Commit, Frame, Hello, Purpose, Put, Refuse, Welcome
from bmsync.core.manifest import Entry, Kind
from bmsync.core.ops import Mkdir
from bmsync.core.roles import NodeRole, RefusalCode, Role, Stamp
from bmsync.state.lock import LOCK_NAME
from bmsync.state.roles import RoleStore
from tests.helpers import whole_root
from tests.integration.agent_harness import Node, file_entry
from tests.sshd import write_config


def promote_here(node: Node) -> NodeRole:
    """What `bmsync promote` does to role.json, under the role lock."""
    return RoleStore(node.state, "bm2").update(NodeRole.promote, "test promote")


def test_a_staged_batch_never_commits_after_a_promotion(node: Node) -> None:
    node.hello()
    data = b"written by bm1\n"
    assert node.send(Put(b"etc/a.conf", 0, data, file_entry(data))) == []
    assert promote_here(node).stamp == Stamp(1, "bm2")

    (answer,) = node.send(Commit(1))
    assert isinstance(answer, Refuse)
    assert (answer.role, answer.code) == (Role.ACTIVE, RefusalCode.RECEIVER_ACTIVE)
    assert (answer.seen_epoch, answer.seen_node) == (1, "bm2")
    assert node.connection.finished
    assert os.listdir(node.root / "etc") == []  # neither the file nor its temporary copy


def test_an_operation_after_a_higher_stamp_was_seen_is_refused(node: Node) -> None:
    node.hello()
    RoleStore(node.state, "bm2").update(lambda r: r.saw(Stamp(4, "bm3")), "another sender")
    (answer,) = node.send(Mkdir(b"etc/new", Entry(Kind.DIR, 0o755, 0, 0, 0)))
    assert isinstance(answer, Refuse) and answer.code == RefusalCode.SENDER_STALE
    assert (answer.seen_epoch, answer.seen_node) == (4, "bm3")
    assert not (node.root / "etc" / "new").exists()


def test_an_unrelated_change_of_role_json_lets_the_writer_go_on(node: Node) -> None:
    node.hello()
    store = RoleStore(node.state, "bm2")
    store.save(store.load(), "rewritten, same role")
    data = b"x\n"
    applied = node.commit(Put(b"etc/a.conf", 0, data, file_entry(data)))
    assert not applied.failures and (node.root / "etc" / "a.conf").read_bytes() == data


def test_promote_wakes_an_idle_agent_process_and_waits_for_its_end(tmp_path: Path) -> None:
    """`bmsync agent` as sshd runs it, idle between batches: the promotion
    signals it, it refuses its sender at once and exits, and only then does
    the promotion return."""
    root = tmp_path / "root"
    root.mkdir()
    conf = write_config(tmp_path / "bm2.yaml", "bm2", root, tmp_path / "state", promote=False)
    agent = subprocess.Popen(
        [sys.executable, "-m", "bmsync", "-c", str(conf), "agent"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert agent.stdin is not None and agent.stdout is not None
        hello = Hello(PROTOCOL_VERSION, "bm1", Role.ACTIVE, 1, Purpose.WRITE, "t")
        agent.stdin.write(encode(hello))
        agent.stdin.flush()
        assert isinstance(read_frame(agent.stdout.fileno()), Welcome)

        done = subprocess.run(
            [sys.executable, "-m", "bmsync", "-c", str(conf), "promote"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "the writing session of bm1 epoch 1" in done.stdout and "has ended" in done.stdout
        # the session ended before promote returned: its lock is free (the
        # process itself may still be tearing its interpreter down)
        with open(tmp_path / "state" / LOCK_NAME, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refusal = read_frame(agent.stdout.fileno())
        assert isinstance(refusal, Refuse) and refusal.code == RefusalCode.RECEIVER_ACTIVE
        assert agent.wait(timeout=30) == 0
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGKILL)
        agent.wait()


def test_a_sender_with_a_higher_stamp_supersedes_the_one_writing(node: Node) -> None:
    node.hello()  # bm1 at epoch 0 writes here
    newcomer = AgentConnection(Agent("bm2", node.root, node.syncset, node.state))
    hello = encode(Hello(PROTOCOL_VERSION, "bm3", Role.ACTIVE, 3, Purpose.WRITE, "t"))
    # bm1's agent, inside this process, cannot be woken by a signal: bm3 is
    # told to come back, but its stamp is recorded at once...
    (busy,) = frames_of(newcomer.receive_data(hello))
    assert isinstance(busy, Refuse) and busy.code == RefusalCode.BUSY
    assert RoleStore(node.state, "bm2").load().highest_seen == Stamp(3, "bm3")
    newcomer.agent.close()
    # ...so bm1's next write is refused, and nothing of it applied
    data = b"late\n"
    (answer,) = node.send(Put(b"etc/late.conf", 0, data, file_entry(data)), Commit(1))
    assert isinstance(answer, Refuse) and answer.code == RefusalCode.SENDER_STALE
    assert (answer.seen_epoch, answer.seen_node) == (3, "bm3")
    node.close()
    assert not (node.root / "etc" / "late.conf").exists()
    again = AgentConnection(Agent("bm2", node.root, node.syncset, node.state))
    (welcome,) = frames_of(again.receive_data(hello))
    assert isinstance(welcome, Welcome)
    again.agent.close()


def frames_of(data: bytes) -> list[Frame]:
    decoder = FrameDecoder()
    decoder.feed(data)
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def read_frame(fd: int) -> Frame:
    decoder = FrameDecoder()
    while (frame := decoder.next_frame()) is None:
        chunk = os.read(fd, 1)
        assert chunk, "the agent closed its output early"
        decoder.feed(chunk)
    return frame


def test_the_same_sender_connecting_again_replaces_its_dead_session(tmp_path: Path) -> None:
    """After a partition the old connection may still look alive here: the
    same sender connecting again ends that session instead of being told,
    for as long as TCP takes to notice, that another sender is writing."""
    root = tmp_path / "root"
    root.mkdir()
    conf = write_config(tmp_path / "bm2.yaml", "bm2", root, tmp_path / "state", promote=False)
    hello = encode(Hello(PROTOCOL_VERSION, "bm1", Role.ACTIVE, 1, Purpose.WRITE, "t"))
    agents = []
    try:
        for _ in range(2):
            agent = subprocess.Popen(
                [sys.executable, "-m", "bmsync", "-c", str(conf), "agent"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            agents.append(agent)
            assert agent.stdin is not None and agent.stdout is not None
            agent.stdin.write(hello)
            agent.stdin.flush()
            assert isinstance(read_frame(agent.stdout.fileno()), Welcome)
        old, new = agents
        assert old.wait(timeout=30) == 0  # ended between frames, not killed
        assert old.stderr is not None and b"session_replaced" in old.stderr.read()
        assert new.poll() is None  # the new session goes on
        # another sender, below the one writing, is still told to wait
        third = AgentConnection(Agent("bm2", root, whole_root(), tmp_path / "state"))
        busy = frames_of(
            third.receive_data(
                encode(Hello(PROTOCOL_VERSION, "bm0", Role.ACTIVE, 1, Purpose.WRITE, "t"))
            )
        )
        third.agent.close()
        assert isinstance(busy[0], Refuse) and busy[0].code == RefusalCode.BUSY
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.send_signal(signal.SIGKILL)
            agent.wait()
