"""The sender pipelines: it streams a whole plan without waiting for any
answer, and the answers come back per batch, in order."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from bmsync.agent.receiver import Agent
from bmsync.core.delta import DELTA_MAX_BYTES, MAX_DELTA_OPS
from bmsync.core.frames import Applied, Commit, Frame, Purpose
from bmsync.core.manifest import digest_bytes
from bmsync.core.ops import PutFile
from bmsync.fs.files import open_root
from bmsync.link import file_sender
from bmsync.link import session as session_module
from bmsync.link.outbox import read_whole
from bmsync.link.session import Outcome, PeerSession
from bmsync.sender.reconcile import resync
from tests.helpers import InMemoryChannel, walk, whole_root


class WithholdingChannel(InMemoryChannel):
    """Holds every Applied answer back until the sender has sent ``commits``
    Commit frames: a sender that waited for an answer per file or per batch
    would never get one."""

    def __init__(self, agent: Agent, commits: int) -> None:
        super().__init__(agent)
        self.commits_needed = commits
        self.commits_seen = 0
        self.released = asyncio.Event()
        self.answers: list[int] = []

    async def send(self, frames: list[Frame]) -> None:
        await super().send(frames)
        self.commits_seen += sum(isinstance(f, Commit) for f in frames)
        if self.commits_seen >= self.commits_needed:
            self.released.set()

    async def receive(self) -> Frame:
        frame = await super().receive()
        if isinstance(frame, Applied):
            await self.released.wait()
            self.answers.append(frame.batch)
        return frame


def test_a_plan_is_streamed_without_waiting_for_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "BATCH_MAX_OPS", 10)
    active, passive, state = tmp_path / "a", tmp_path / "p", tmp_path / "s"
    (active / "etc").mkdir(parents=True)
    passive.mkdir()
    state.mkdir(mode=0o700)
    for i in range(95):
        (active / "etc" / f"f{i:02}.conf").write_text(f"{i}\n")
    # 1 mkdir + 95 files + 1 directory fix-up = 97 ops -> 10 batches
    syncset = whole_root()
    channel = WithholdingChannel(Agent("bm2", passive, syncset, state), commits=10)

    async def scenario() -> None:
        sender = PeerSession(channel, "bm1")
        await sender.open(Purpose.WRITE)
        report = await asyncio.wait_for(resync(sender, active, syncset), timeout=30)
        assert report.converged and report.files_sent == 95
        await sender.close()

    asyncio.run(scenario())
    assert channel.answers == list(range(10))
    assert walk(active) == walk(passive)


def test_a_delta_of_more_operations_than_the_agent_takes_goes_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    active, passive, state = tmp_path / "a", tmp_path / "p", tmp_path / "s"
    (active / "etc").mkdir(parents=True)
    (passive / "etc").mkdir(parents=True)
    state.mkdir(mode=0o700)
    base = b"".join(b"line %d\n" % i for i in range(20_000))
    new = base.replace(b"line 100\n", b"LINE 100\n").replace(b"line 15000\n", b"LINE 15000\n")
    (active / "etc/big.conf").write_bytes(new)
    root_fd = open_root(active)
    try:
        found = read_whole(root_fd, b"etc/big.conf", DELTA_MAX_BYTES)
        assert found is not None
        op = PutFile(b"etc/big.conf", found[1])
        # make_delta gives 5 operations: copy, literal, copy, literal, copy
        for limit, deltas in ((4, 0), (MAX_DELTA_OPS, 1)):
            monkeypatch.setattr(file_sender, "MAX_DELTA_OPS", limit)
            (passive / "etc/big.conf").write_bytes(base)
            channel = InMemoryChannel(Agent("bm2", passive, whole_root(), state))

            async def scenario(channel: InMemoryChannel) -> Outcome:
                sender = PeerSession(channel, "bm1")
                await sender.open(Purpose.WRITE)
                outcome = await sender.apply(
                    [op], root_fd, delta_base=lambda _: (digest_bytes(base), base)
                )
                await sender.close()
                return outcome

            outcome = asyncio.run(scenario(channel))
            assert outcome.failures == [] and outcome.deltas == deltas
            assert (passive / "etc/big.conf").read_bytes() == new
    finally:
        os.close(root_fd)
