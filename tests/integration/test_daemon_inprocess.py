"""The daemon in this process, through its injection points: ``connect``
gives an in-memory channel to a real ``Agent`` on a tmp tree (no SSH),
``clock`` is a clock the test moves, ``rng`` fixes the jitter. Every
assertion is about behaviour (what was sent, the state, what was logged),
never about how long something took: waits have generous deadlines only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from structlog.testing import capture_logs

from bmsync.agent.receiver import Agent
from bmsync.config.model import Config, PeerConfig
from bmsync.config.parse import load
from bmsync.core.errors import PeerUnreachable, TransportError
from bmsync.core.frames import Frame
from bmsync.sender.daemon import Daemon
from bmsync.sender.status import State
from bmsync.state.directory import ensure_state_dir
from bmsync.state.roles import RoleStore
from tests.helpers import InMemoryChannel, walk

DEADLINE_S = 60.0  # for a condition to come true; never asserted as a duration


class FakeClock:
    """Monotonic time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LosableChannel(InMemoryChannel):
    """An in-memory link the test can cut."""

    def __init__(self, agent: Agent) -> None:
        super().__init__(agent)
        self.lost = asyncio.Event()

    async def send(self, frames: list[Frame]) -> None:
        if self.lost.is_set():
            raise TransportError("the test cut the link")
        await super().send(frames)

    async def receive(self) -> Frame:
        if self.lost.is_set():
            raise TransportError("the test cut the link")
        return await super().receive()

    async def wait_lost(self) -> None:
        await self.lost.wait()


class Connector:
    """``Daemon(connect=)``: fails ``failures`` times, then opens a channel
    to a fresh agent on the passive tree; ``gate``, when cleared, holds the
    next attempt until the test sets it."""

    def __init__(self, passive: Path, state: Path, config: Config) -> None:
        self.passive, self.state, self.config = passive, state, config
        self.failures = 0
        self.attempts = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.channels: list[LosableChannel] = []

    async def __call__(self, peer: PeerConfig) -> LosableChannel:
        self.attempts += 1
        await self.gate.wait()
        if self.failures > 0:
            self.failures -= 1
            raise PeerUnreachable("connection refused (by the test)")
        agent = Agent("bm2", self.passive, self.config.syncset(), self.state)
        channel = LosableChannel(agent)
        self.channels.append(channel)
        return channel


class Nodes:
    def __init__(self, tmp: Path, sync: list[str], peer: list[str]) -> None:
        self.active, self.passive = tmp / "bm1-root", tmp / "bm2-root"
        self.state1, self.state2 = tmp / "state1", tmp / "state2"
        for d in (self.active, self.passive):
            d.mkdir()
        ensure_state_dir(self.state1)
        ensure_state_dir(self.state2)
        conf = tmp / "bm1.yaml"
        key = tmp / "id_ed25519"
        key.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(
                Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()
            )
        )
        key.chmod(0o600)
        lines = [
            "node: bm1",
            f"state_dir: {self.state1}",
            f"control_socket: {tmp / 'bm1.sock'}",
            "peer:",
            "  host: 127.0.0.1",
            "  user: root",
            f"  identity: {key}",  # never used: connect is the test's
            f"  known_hosts: {key}",
            "  reconnect_min_s: 0.01",
            "  reconnect_max_s: 0.04",
            *(f"  {line}" for line in peer),
            "sync:",
            "  preset: none",
            f"  root: {self.active}",
            '  paths: ["/"]',
            "  batch_window_ms: 50",
            "  max_delay_ms: 200",
            *(f"  {line}" for line in sync),
        ]
        conf.write_text("\n".join(lines) + "\n")
        roles = RoleStore(self.state1, "bm1")
        roles.save(roles.load().promote(), "promoted by the test set-up")
        self.config = load(conf)
        self.clock = FakeClock()
        self.connector = Connector(self.passive, self.state2, self.config)

    def daemon(self, rng: Callable[[], float] = lambda: 0.0) -> Daemon:
        return Daemon(self.config, connect=self.connector, clock=self.clock, rng=rng)

    def in_sync(self) -> bool:
        return walk(self.active) == walk(self.passive)


@pytest.fixture
def nodes(tmp_path: Path) -> Nodes:
    return Nodes(tmp_path, sync=[], peer=[])


async def until(check: Callable[[], bool], what: str, daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not reached; status {daemon.status()}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[asyncio.Task[int]]:
    task = asyncio.ensure_future(daemon.run())
    try:
        yield task
    finally:
        daemon.stop()
        await asyncio.wait_for(task, DEADLINE_S)


async def control(daemon: Daemon, **request: Any) -> dict[str, Any]:
    return await daemon.commands.handle(request)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_reconnect_backs_off_exponentially_with_jitter_and_starts_over_after_a_session(
    nodes: Nodes,
) -> None:
    (nodes.active / "a.conf").write_text("a\n")
    nodes.connector.failures = 4
    daemon = nodes.daemon(rng=lambda: 0.0)  # jitter at its lowest: half the delay

    async def scenario() -> None:
        async with running(daemon):
            await until(lambda: nodes.in_sync(), "first sync after the failures", daemon)
            await until(lambda: daemon.state is State.SYNCING, "syncing", daemon)
            assert nodes.connector.attempts == 5
            status = daemon.status()
            assert status["error_count"] == 4
            assert all("peer link:" in e["message"] for e in status["errors"])
            # the link is cut: the next wait starts from the shortest again
            nodes.connector.gate.clear()
            nodes.connector.channels[-1].lost.set()
            await until(lambda: nodes.connector.attempts == 6, "a new attempt", daemon)
            assert daemon.state is State.DISCONNECTED
            (nodes.active / "b.conf").write_text("b\n")  # while it is away
            nodes.connector.gate.set()
            await until(lambda: nodes.in_sync(), "the change made while away", daemon)

    with capture_logs() as logs:
        asyncio.run(scenario())
    waits = [(e["attempt"], e["seconds"]) for e in events(logs, "reconnect_wait")]
    # min 0.01 s doubling, capped at 0.04 s, times 0.5 (rng 0)
    assert waits == [(1, 0.005), (2, 0.01), (3, 0.02), (4, 0.02), (1, 0.005)]


def test_jitter_scales_the_wait_with_the_random_draw(nodes: Nodes) -> None:
    nodes.connector.failures = 2
    daemon = nodes.daemon(rng=lambda: 1.0)  # at its highest: the whole delay

    async def scenario() -> None:
        async with running(daemon):
            await until(lambda: daemon.state is State.SYNCING, "syncing", daemon)

    with capture_logs() as logs:
        asyncio.run(scenario())
    assert [e["seconds"] for e in events(logs, "reconnect_wait")] == [0.01, 0.02]


def test_queue_limit_turns_a_backlog_into_one_rescan(tmp_path: Path) -> None:
    nodes = Nodes(tmp_path, sync=["queue_limit: 5"], peer=[])
    nodes.connector.gate.clear()  # the peer is away
    daemon = nodes.daemon()

    async def scenario() -> None:
        async with running(daemon):
            await until(lambda: nodes.connector.attempts == 1, "connecting", daemon)
            assert daemon.state is State.DISCONNECTED
            for i in range(20):
                (nodes.active / f"f{i:02}.conf").write_text(f"{i}\n")
            await until(lambda: daemon.changes.batcher.queued == 1, "the rescan alone", daemon)
            status = daemon.status()
            assert status["queued"] == 1 and status["lag_s"] >= 0
            nodes.connector.gate.set()
            await until(lambda: nodes.in_sync(), "the reconcile sends it all", daemon)

    with capture_logs() as logs:
        asyncio.run(scenario())
    assert events(logs, "queue_full")
    assert len(list(nodes.passive.iterdir())) == 20


def brake_nodes(tmp_path: Path) -> Nodes:
    nodes = Nodes(tmp_path, sync=["delete_brake_count: 3", "delete_brake_share: 1.0"], peer=[])
    for i in range(10):
        (nodes.active / f"f{i}.conf").write_text(f"{i}\n")
    return nodes


async def storm(nodes: Nodes, daemon: Daemon) -> dict[str, Any]:
    """Six files deleted at once: held back, the daemon paused."""
    await until(lambda: nodes.in_sync() and daemon.state is State.SYNCING, "first sync", daemon)
    for i in range(6):
        (nodes.active / f"f{i}.conf").unlink()
    # deletions leave together once none came for the window: move the clock
    await until(lambda: daemon.changes.batcher.queued == 6, "six deletions queued", daemon)
    nodes.clock.advance(10)
    daemon.signals.wake.set()
    await until(lambda: daemon.state is State.PAUSED, "paused by the brake", daemon)
    status = daemon.status()
    assert status["paused_reason"].startswith("delete storm: 6 of 10")
    assert status["queued"] == 6  # held back, counted
    assert len(status["clears"]) == 2
    assert len(list(nodes.passive.iterdir())) == 10  # nothing deleted there
    return status


def test_the_brake_holds_a_delete_storm_until_resumed(tmp_path: Path) -> None:
    nodes = brake_nodes(tmp_path)
    daemon = nodes.daemon()

    async def scenario() -> None:
        async with running(daemon):
            await storm(nodes, daemon)
            # a change made while paused waits too
            (nodes.active / "new.conf").write_text("new\n")
            answer = await control(daemon, command="resume")
            assert answer["changed"] and answer["reason"] is None
            await until(lambda: nodes.in_sync(), "the deletions propagated", daemon)
            assert (await control(daemon, command="resume"))["changed"] is False

    asyncio.run(scenario())
    assert sorted(p.name for p in nodes.passive.iterdir()) == [
        *(f"f{i}.conf" for i in range(6, 10)),
        "new.conf",
    ]
    assert daemon.status()["paused_reason"] is None


def test_resume_discard_restores_the_deleted_files_here(tmp_path: Path) -> None:
    nodes = brake_nodes(tmp_path)
    daemon = nodes.daemon()

    async def scenario() -> None:
        async with running(daemon):
            await storm(nodes, daemon)
            answer = await control(daemon, command="resume", discard=True)
            assert answer["changed"] and answer["restored"] == 6 and not answer["failures"]
            await until(lambda: daemon.state is State.SYNCING, "syncing again", daemon)
            await until(lambda: nodes.in_sync(), "in sync", daemon)

    asyncio.run(scenario())
    assert len(list(nodes.active.iterdir())) == 10
    assert (nodes.active / "f0.conf").read_text() == "0\n"


def test_a_pause_by_an_operator_survives_a_restart(tmp_path: Path) -> None:
    nodes = Nodes(tmp_path, sync=[], peer=[])
    first = nodes.daemon()

    async def pause() -> None:
        async with running(first):
            await until(lambda: first.state is State.SYNCING, "syncing", first)
            answer = await control(first, command="pause", reason="maintenance window")
            assert answer["changed"] and answer["state"] == "paused"
            again = await control(first, command="pause")
            assert again["changed"] is False and again["reason"] == "maintenance window"

    asyncio.run(pause())
    second = nodes.daemon()

    async def restarted() -> None:
        async with running(second):
            assert second.state is State.PAUSED  # from the flag on disk
            await until(lambda: second.link.connected, "connected (watching)", second)
            (nodes.active / "x.conf").write_text("x\n")
            await until(lambda: second.changes.batcher.queued >= 1, "queued", second)
            assert second.state is State.PAUSED
            assert not (nodes.passive / "x.conf").exists()
            with pytest.raises(Exception, match="sync is paused"):
                await control(second, command="resync")
            await control(second, command="resume")
            await until(lambda: nodes.in_sync(), "sent after the resume", second)

    asyncio.run(restarted())


def test_changes_that_arrive_together_leave_as_one_batch(nodes: Nodes) -> None:
    for i in range(5):
        (nodes.active / f"f{i}.conf").write_text(f"{i}\n")
    daemon = nodes.daemon()

    async def scenario() -> None:
        async with running(daemon):
            await until(lambda: nodes.in_sync() and daemon.state is State.SYNCING, "sync", daemon)
            before = daemon.stats.batches
            for i in range(4):  # deletions wait for a quiet window: the clock is still
                (nodes.active / f"f{i}.conf").unlink()
            await until(lambda: daemon.changes.batcher.queued == 4, "four queued", daemon)
            nodes.clock.advance(10)
            daemon.signals.wake.set()
            await until(lambda: daemon.stats.batches > before, "a batch", daemon)
            assert nodes.in_sync()
            assert daemon.stats.batches == before + 1
            assert daemon.stats.last_batch is not None
            assert daemon.stats.last_batch["paths"] == 4

    asyncio.run(scenario())


def test_resync_through_the_daemon_answers_with_the_reconcile(nodes: Nodes) -> None:
    (nodes.active / "a.conf").write_text("a\n")
    daemon = nodes.daemon()

    async def scenario() -> None:
        async with running(daemon):
            await until(lambda: nodes.in_sync() and daemon.state is State.SYNCING, "sync", daemon)
            (nodes.passive / "a.conf").write_text("changed on the passive\n")
            answer = await control(daemon, command="resync")
            assert answer["ok"] and answer["converged"] and answer["files_sent"] == 1
            assert nodes.in_sync()
            with pytest.raises(Exception, match="unknown control command"):
                await control(daemon, command="nonsense")

    asyncio.run(scenario())


def test_both_active_suspends_until_this_node_is_promoted_above_the_peer(nodes: Nodes) -> None:
    (nodes.active / "a.conf").write_text("a\n")
    peer_roles = RoleStore(nodes.state2, "bm2")
    peer_roles.save(peer_roles.load().promote(), "a second operator")
    daemon = nodes.daemon()

    async def scenario() -> None:
        async with running(daemon):
            await until(lambda: daemon.state is State.SUSPENDED, "suspended", daemon)
            status = daemon.status()
            assert "bm2 claims active too" in status["reason"]
            assert status["peer_role"] == "active" and status["clears"]
            assert not (nodes.passive / "a.conf").exists()
            with pytest.raises(Exception, match="needs '--reason"):
                await control(daemon, command="resume", force=True)
            # bm2 saw epoch 1 as well: this node is stale, and no force clears that
            forced = await control(daemon, command="resume", force=True, reason="I am sure")
            assert forced["changed"] is False and forced["state"] == "suspended"
            # evidence: bm2 demoted, then this node promoted above it
            peer_roles.save(peer_roles.load().demote(), "the second operator undoes it")
            roles = RoleStore(nodes.state1, "bm1")
            roles.save(roles.load().promote(), "bmsync promote")
            answer = await control(daemon, command="role")
            assert answer["ok"]
            await until(lambda: nodes.in_sync(), "sent once cleared", daemon)
            await until(lambda: daemon.state is State.SYNCING, "syncing", daemon)
            assert daemon.status()["epoch"] == 2

    asyncio.run(scenario())


def test_the_acknowledged_manifest_survives_a_restart_and_is_confirmed_by_digest(
    nodes: Nodes,
) -> None:
    for i in range(3):
        (nodes.active / f"f{i}.conf").write_text(f"{i}\n")
    first = nodes.daemon()

    async def sync(daemon: Daemon) -> None:
        async with running(daemon):
            await until(lambda: nodes.in_sync() and daemon.state is State.SYNCING, "sync", daemon)

    asyncio.run(sync(first))
    with capture_logs() as logs:
        asyncio.run(sync(nodes.daemon()))
    assert events(logs, "peer_manifest_confirmed")
    assert not events(logs, "peer_manifest_differs")
