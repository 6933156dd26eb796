"""The same sync against asyncssh's own server, in process: the agent runs
behind an asyncssh SSHServerProcess instead of OpenSSH's forced command."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh
import pytest

from bmsync.agent.receiver import Agent
from bmsync.agent.stdio import AgentConnection
from bmsync.config.model import PeerConfig
from bmsync.core.errors import AuthRefused, HostKeyMismatch, PeerRefused
from bmsync.core.frames import Purpose
from bmsync.link.session import PeerSession
from bmsync.link.ssh import connect
from bmsync.link.verify import verify
from bmsync.sender.reconcile import resync
from tests.helpers import walk, whole_root
from tests.integration.trees import populate_odd
from tests.sshd import copy_tree


@asynccontextmanager
async def agent_server(
    tmp: Path, make_agent: Callable[[], Agent]
) -> AsyncIterator[tuple[PeerConfig, asyncssh.SSHKey]]:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    identity = tmp / "id_ed25519"
    identity.write_bytes(client_key.export_private_key())

    async def run_agent(process: asyncssh.SSHServerProcess[bytes]) -> None:
        connection = AgentConnection(make_agent())
        try:
            while not connection.finished:
                data = await process.stdin.read(65536)
                reply = await asyncio.to_thread(connection.receive_data, data)
                if reply:
                    process.stdout.write(reply)
        finally:
            connection.agent.close()
            process.exit(connection.exit_code)

    server = await asyncssh.create_server(
        asyncssh.SSHServer,
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(
            client_key.export_public_key().decode()
        ),
        process_factory=run_agent,
        encoding=None,
    )
    port = server.sockets[0].getsockname()[1]
    known_hosts = tmp / "known_hosts"
    known_hosts.write_bytes(
        f"[127.0.0.1]:{port} ".encode() + host_key.export_public_key().strip() + b"\n"
    )
    peer = PeerConfig(
        host="127.0.0.1",
        port=port,
        user="root",
        identity=identity,
        known_hosts=known_hosts,
        agent_command="bmsync agent",
        connect_timeout_s=5,
        keepalive_interval_s=15,
    )
    try:
        yield peer, client_key
    finally:
        server.close()
        await server.wait_closed()


def _nodes(tmp_path: Path) -> tuple[Path, Path, Path]:
    active, passive, state = tmp_path / "a", tmp_path / "p", tmp_path / "state"
    active.mkdir()
    passive.mkdir()
    state.mkdir(mode=0o700)
    return active, passive, state


def test_resync_and_verify_over_asyncssh_server(tmp_path: Path) -> None:
    active, passive, state = _nodes(tmp_path)
    copy_tree(Path("/etc"), active / "etc")
    populate_odd(active / "etc")
    syncset = whole_root()

    async def scenario() -> None:
        async with agent_server(tmp_path, lambda: Agent("bm2", passive, syncset, state)) as (
            peer,
            _,
        ):
            session = PeerSession(await connect(peer), "bm1")
            await session.open(Purpose.WRITE)
            report = await resync(session, active, syncset)
            await session.close()
            assert report.converged and report.failures == []

            session = PeerSession(await connect(peer), "bm1")
            await session.open(Purpose.READ)
            found, _ = await verify(session, active, syncset)
            await session.close()
            assert found == []

    asyncio.run(scenario())
    assert walk(active) == walk(passive)


def test_second_sender_is_refused_while_one_writes(tmp_path: Path) -> None:
    _, passive, state = _nodes(tmp_path)
    syncset = whole_root()

    async def scenario() -> None:
        async with agent_server(tmp_path, lambda: Agent("bm2", passive, syncset, state)) as (
            peer,
            _,
        ):
            first = PeerSession(await connect(peer), "bm1")
            await first.open(Purpose.WRITE)
            second = PeerSession(await connect(peer), "bm3")
            with pytest.raises(PeerRefused, match="another sender is writing to this node"):
                await second.open(Purpose.WRITE)
            await second.close()
            # a read-only session (verify) is still allowed alongside
            reader = PeerSession(await connect(peer), "bm3")
            await reader.open(Purpose.READ)
            await reader.close()
            await first.close()
            # the lock dies with the session
            third = PeerSession(await connect(peer), "bm3")
            await third.open(Purpose.WRITE)
            await third.close()

    asyncio.run(scenario())


def test_wrong_host_key_and_unknown_client_key(tmp_path: Path) -> None:
    _, passive, state = _nodes(tmp_path)

    async def scenario() -> None:
        async with agent_server(tmp_path, lambda: Agent("bm2", passive, whole_root(), state)) as (
            peer,
            _,
        ):
            impostor = asyncssh.generate_private_key("ssh-ed25519")
            bad_hosts = tmp_path / "bad_known_hosts"
            bad_hosts.write_bytes(
                f"[127.0.0.1]:{peer.port} ".encode() + impostor.export_public_key()
            )
            with pytest.raises(HostKeyMismatch, match=r"HOST KEY CHANGED.*SHA256:"):
                await connect(_replace(peer, known_hosts=bad_hosts))

            stranger = tmp_path / "stranger"
            stranger.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
            with pytest.raises(AuthRefused, match="refused key"):
                await connect(_replace(peer, identity=stranger))

    asyncio.run(scenario())


def _replace(peer: PeerConfig, **changes: Path) -> PeerConfig:
    return dataclasses.replace(peer, **changes)  # type: ignore[arg-type]
