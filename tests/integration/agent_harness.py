"""A passive node for the agent tests: a root, a state directory, and an
agent in process spoken to in bytes through the real codec."""

from __future__ import annotations

import struct
from pathlib import Path

import msgspec

from bmsync.agent.receiver import Agent
from bmsync.agent.stdio import AgentConnection
from bmsync.core.codec import FrameDecoder, encode
from bmsync.core.excludes import Rule, SyncSet
from bmsync.core.frames import PROTOCOL_VERSION, Applied, Commit, Frame, Hello, Purpose, Welcome
from bmsync.core.manifest import Entry, Kind, digest_bytes
from bmsync.core.roles import Role


class Node:
    """A passive node's root, and an agent speaking bytes."""

    def __init__(self, tmp: Path, syncset: SyncSet | None = None) -> None:
        self.root = tmp / "root"
        self.root.mkdir(parents=True)
        (self.root / "etc").mkdir()
        self.state = tmp / "state"
        self.state.mkdir(mode=0o700)
        self.syncset = syncset or SyncSet.build(["/etc"], [Rule("/etc/hostname")])
        self.connection = AgentConnection(Agent("bm2", self.root, self.syncset, self.state))

    def send_bytes(self, data: bytes) -> list[Frame]:
        decoder = FrameDecoder()
        decoder.feed(self.connection.receive_data(data))
        out = []
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
        return out

    def send(self, *frames: Frame) -> list[Frame]:
        return self.send_bytes(b"".join(encode(f) for f in frames))

    def hello(self, purpose: Purpose = Purpose.WRITE) -> None:
        (answer,) = self.send(Hello(PROTOCOL_VERSION, "bm1", Role.ACTIVE, 0, purpose, "test"))
        assert isinstance(answer, Welcome)

    def commit(self, *frames: Frame) -> Applied:
        replies = self.send(*frames, Commit(7))
        assert len(replies) == 1 and isinstance(replies[0], Applied), replies
        return replies[0]

    def close(self) -> None:
        self.connection.agent.close()


def file_entry(data: bytes, mode: int = 0o644) -> Entry:
    return Entry(Kind.FILE, mode, 0, 0, 1_700_000_000_123_456_789, len(data), digest_bytes(data))


DIR = Entry(Kind.DIR, 0o755, 0, 0, 1_700_000_000_000_000_000)


def raw_frame(body: object) -> bytes:
    data = msgspec.msgpack.encode(body)
    return struct.pack(">I", len(data)) + data
