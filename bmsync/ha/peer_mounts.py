"""Asking the peer, over the sync's SSH link and read-only, whether it has
the shared storage's devices mounted: ``bmsync ha storage mount`` never
mounts a device the peer holds."""

from __future__ import annotations

import asyncio

import structlog

from bmsync.config.model import Config
from bmsync.core.errors import BmsyncError, ProtocolError, RoleStateError
from bmsync.core.frames import Purpose
from bmsync.core.roles import NodeRole
from bmsync.ha.storage_plan import PeerMounts, PeerReport, PeerUnknown
from bmsync.link.session import PeerSession
from bmsync.link.ssh import connect
from bmsync.state.roles import RoleStore

log = structlog.get_logger("bmsync.ha")

# The agent reads its mount table and stats a few devices.
ANSWER_TIMEOUT_S = 30.0


async def ask_peer(conf: Config, devices: list[str]) -> PeerReport:
    """Where the peer has each of ``devices`` mounted, or why it could not
    be asked (no ``peer:`` section, unreachable, its agent refused)."""
    if conf.peer is None:
        return PeerUnknown(f"{conf.source} has no 'peer:' section")
    where = f"{conf.peer.user}@{conf.peer.host}:{conf.peer.port}"
    try:
        me = RoleStore(conf.state_dir, conf.node).load()
    except (RoleStateError, OSError):
        me = NodeRole(conf.node)  # a read-only question: any stamp will do
    try:
        channel = await connect(conf.peer)
    except BmsyncError as exc:
        return PeerUnknown(f"{where}: {exc}")
    session = PeerSession(channel, conf.node, me.epoch, me.role)
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            welcome = await session.open(Purpose.READ)
            report = await session.mounts(devices)
    except TimeoutError:
        return PeerUnknown(f"{where}: no answer within {ANSWER_TIMEOUT_S:g} s")
    except ProtocolError as exc:
        return PeerUnknown(
            f"{where}: {exc} (the peer's bmsync may be older: install the same version on both)"
        )
    except BmsyncError as exc:
        return PeerUnknown(f"{where}: {exc}")
    finally:
        await session.close()
    log.info(
        "peer_mounts",
        peer=welcome.node,
        mounted={d.device: d.mount_points for d in report.devices if d.mount_points},
    )
    return PeerMounts(
        welcome.node,
        mounted={d.device: tuple(d.mount_points) for d in report.devices if d.mount_points},
        absent=tuple(d.device for d in report.devices if not d.present),
    )
