"""The sender pipelines: it streams a whole plan without waiting for any
answer, and the answers come back per batch, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bmsync import session as session_module
from bmsync.agent import Agent
from bmsync.core.frames import Applied, Commit, Frame, Purpose
from bmsync.reconcile import resync
from bmsync.session import PeerSession
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
