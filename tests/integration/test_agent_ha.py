"""The agent's sessions of purpose 'ha' (bmsync.agent.receiver), in
process and in bytes through the real codec: an HA step answered by the
node's ``ha`` callable; one HA operation at a time on a node; an agent
that runs no HA steps says so; frames of one kind of session refused in
another; an action outside the closed list refused at decoding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from bmsync.agent.receiver import Agent
from bmsync.agent.stdio import AgentConnection
from bmsync.core.codec import FrameDecoder, encode
from bmsync.core.errors import ProtocolError
from bmsync.core.frames import (
    PROTOCOL_VERSION,
    Bye,
    ErrorFrame,
    Frame,
    Hello,
    ManifestRequest,
    Purpose,
    Refuse,
    Welcome,
)
from bmsync.core.ha_frames import HaAction, HaAnswer, HaRequest, NodeFacts
from bmsync.core.ops import Mkdir
from bmsync.core.roles import RefusalCode, Role
from bmsync.state.operation import LOCK_NAME
from tests.integration.agent_harness import DIR, Node, raw_frame

FACTS = NodeFacts("bm2", Role.PASSIVE, 0, False, "standby", False, False)


class FakeHa:
    """The node's HA steps: records what it was asked, answers ok."""

    def __init__(self) -> None:
        self.asked: list[HaRequest] = []

    def __call__(self, request: HaRequest) -> HaAnswer:
        self.asked.append(request)
        return HaAnswer(ok=True, lines=[f"{request.action}: done"], facts=FACTS)


class HaNode(Node):
    """A passive node whose agent runs HA steps with ``ha``."""

    def __init__(self, tmp: Path, ha: FakeHa | None) -> None:
        super().__init__(tmp)
        self.connection = self.connect(ha)

    def connect(self, ha: FakeHa | None) -> AgentConnection:
        """Another agent on this node (another `bmsync agent` process)."""
        return AgentConnection(Agent("bm2", self.root, self.syncset, self.state, ha=ha))


def send(connection: AgentConnection, *frames: Frame) -> list[Frame]:
    decoder = FrameDecoder()
    decoder.feed(connection.receive_data(b"".join(encode(f) for f in frames)))
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def hello(purpose: Purpose = Purpose.HA) -> Hello:
    return Hello(PROTOCOL_VERSION, "bm1", Role.ACTIVE, 0, purpose, "test")


@pytest.fixture(autouse=True)
def _logs() -> Iterator[None]:
    """Nothing logged where an earlier test left structlog pointing (a
    CLI test's captured, since closed, stderr)."""
    structlog.reset_defaults()
    with capture_logs():
        yield


@pytest.fixture
def ha() -> FakeHa:
    return FakeHa()


@pytest.fixture
def node(tmp_path: Path, ha: FakeHa) -> Iterator[HaNode]:
    passive = HaNode(tmp_path, ha)
    try:
        yield passive
    finally:
        passive.close()


def test_an_ha_step_is_answered_by_the_nodes_ha_steps(node: HaNode, ha: FakeHa) -> None:
    (welcome,) = node.send(hello())
    assert isinstance(welcome, Welcome) and welcome.node == "bm2"
    request = HaRequest(HaAction.STATUS, "switchover bm1 -> bm2")
    (answer,) = node.send(request)
    assert answer == HaAnswer(ok=True, lines=["status: done"], facts=FACTS)
    (answer,) = node.send(HaRequest(HaAction.DRAIN, "switchover bm1 -> bm2"))
    assert isinstance(answer, HaAnswer) and answer.lines == ["drain: done"]
    assert ha.asked == [request, HaRequest(HaAction.DRAIN, "switchover bm1 -> bm2")]
    assert node.send(Bye()) == []
    assert node.connection.finished and node.connection.exit_code == 0


def test_the_session_holds_the_operation_lock_saying_who_asked(node: HaNode) -> None:
    node.hello(Purpose.HA)
    assert (node.state / LOCK_NAME).read_text().startswith("steps asked by bm1, pid ")
    node.close()
    assert (node.state / LOCK_NAME).read_text() == ""


def test_a_second_ha_session_is_busy_until_the_first_ends(node: HaNode, ha: FakeHa) -> None:
    node.hello(Purpose.HA)
    other = node.connect(FakeHa())
    try:
        (refused,) = send(other, hello())
        assert isinstance(refused, Refuse)
        assert refused.code == RefusalCode.BUSY
        assert "another HA operation runs on this node" in refused.reason
        assert "steps asked by bm1" in refused.reason
        assert refused.node == "bm2" and refused.role is Role.PASSIVE
        assert other.finished
    finally:
        other.agent.close()  # a refused session's close leaves the holder's lock alone

    # the first session still holds it, and still runs its steps
    (answer,) = node.send(HaRequest(HaAction.STATUS))
    assert isinstance(answer, HaAnswer) and answer.ok
    third = node.connect(FakeHa())
    try:
        (refused,) = send(third, hello())
        assert isinstance(refused, Refuse) and refused.code == RefusalCode.BUSY
    finally:
        third.agent.close()

    node.send(Bye())
    node.close()
    after = node.connect(ha)
    try:
        (welcome,) = send(after, hello())
        assert isinstance(welcome, Welcome)
        (answer,) = send(after, HaRequest(HaAction.STATUS))
        assert isinstance(answer, HaAnswer) and answer.ok
    finally:
        after.agent.close()


def test_sync_sessions_do_not_take_the_operation_lock(node: HaNode) -> None:
    node.hello(Purpose.HA)
    reader = node.connect(FakeHa())
    try:
        (welcome,) = send(reader, hello(Purpose.READ))
        assert isinstance(welcome, Welcome)
    finally:
        reader.agent.close()
    (answer,) = node.send(HaRequest(HaAction.STATUS))
    assert isinstance(answer, HaAnswer)


def test_an_agent_without_ha_steps_refuses_ha_sessions(tmp_path: Path) -> None:
    plain = HaNode(tmp_path, None)
    try:
        (refused,) = plain.send(hello())
        assert isinstance(refused, Refuse)
        assert refused.code == RefusalCode.INCOMPATIBLE
        assert refused.reason == "bm2's agent runs no HA steps"
        assert plain.connection.finished
        assert not (plain.state / LOCK_NAME).exists()
    finally:
        plain.close()


def test_an_ha_request_in_a_read_session_is_a_protocol_error(node: HaNode, ha: FakeHa) -> None:
    node.hello(Purpose.READ)
    (reply,) = node.send(HaRequest(HaAction.DEMOTE))
    assert isinstance(reply, ErrorFrame)
    assert "HaRequest" in reply.message and "outside an HA session" in reply.message
    assert node.connection.finished and node.connection.exit_code == ProtocolError.exit_code
    assert ha.asked == []


def test_an_ha_request_in_a_write_session_is_a_protocol_error(node: HaNode, ha: FakeHa) -> None:
    node.hello(Purpose.WRITE)
    (reply,) = node.send(HaRequest(HaAction.PROMOTE))
    assert isinstance(reply, ErrorFrame) and "outside an HA session" in reply.message
    assert ha.asked == []


def test_an_ha_request_before_hello_is_a_protocol_error(node: HaNode, ha: FakeHa) -> None:
    (reply,) = node.send(HaRequest(HaAction.STATUS))
    assert isinstance(reply, ErrorFrame) and "HaRequest before Hello" in reply.message
    assert ha.asked == []


def test_a_write_in_an_ha_session_is_a_protocol_error(node: HaNode) -> None:
    node.hello(Purpose.HA)
    (reply,) = node.send(Mkdir(b"etc/new", DIR))
    assert isinstance(reply, ErrorFrame)
    assert "Mkdir in an HA session" in reply.message
    assert "writing session" not in reply.message  # there was none
    assert node.connection.finished and node.connection.exit_code == ProtocolError.exit_code
    assert not (node.root / "etc/new").exists()


def test_a_read_in_an_ha_session_is_a_protocol_error(node: HaNode) -> None:
    node.hello(Purpose.HA)
    (reply,) = node.send(ManifestRequest())
    assert isinstance(reply, ErrorFrame) and "ManifestRequest in an HA session" in reply.message


def test_a_second_hello_in_an_ha_session_is_a_protocol_error(node: HaNode) -> None:
    node.hello(Purpose.HA)
    (reply,) = node.send(hello())
    assert isinstance(reply, ErrorFrame) and "second Hello" in reply.message


def test_an_action_outside_the_list_is_refused_at_decoding(node: HaNode, ha: FakeHa) -> None:
    body = {"type": "ha?", "action": "rm -rf /"}
    decoder = FrameDecoder(to_agent=True)
    decoder.feed(raw_frame(body))
    with pytest.raises(ProtocolError, match="malformed frame"):
        decoder.next_frame()

    node.hello(Purpose.HA)
    (reply,) = node.send_bytes(raw_frame(body))
    assert isinstance(reply, ErrorFrame) and "malformed frame" in reply.message
    assert "action" in reply.message
    assert node.connection.finished and ha.asked == []


def test_an_ha_answer_sent_to_the_agent_is_refused_at_decoding(node: HaNode) -> None:
    node.hello(Purpose.HA)
    (reply,) = node.send(HaAnswer(ok=True))
    assert isinstance(reply, ErrorFrame)
    assert "the agent does not accept HaAnswer frames" in reply.message


@pytest.mark.parametrize("action", [HaAction.FENCE_PEER, HaAction.STORAGE_MOUNT_PEER_DOWN])
def test_a_takeovers_own_steps_are_never_run_for_a_peer(
    node: HaNode, ha: FakeHa, action: HaAction
) -> None:
    """A peer cannot make this node fence it back, nor mount the storage
    as if the peer were down."""
    node.send(hello())
    (reply,) = node.send(HaRequest(action, "takeover"))
    assert isinstance(reply, ErrorFrame)
    assert f"{action} is not a step a peer may ask of this node" in reply.message
    assert ha.asked == []
