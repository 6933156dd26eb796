"""Asking the peer, over the sync's SSH link and read-only, whether it has
the shared storage's devices mounted: ``bmsync ha storage mount`` never
mounts a device the peer holds."""

from __future__ import annotations

import asyncio

import structlog

from bmsync.config.model import Config
from bmsync.core.errors import BmsyncError, ProtocolError
from bmsync.core.frames import Purpose
from bmsync.ha.peer_link import peer_session
from bmsync.ha.storage_plan import PeerMounts, PeerReport, PeerUnknown

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
        async with (
            asyncio.timeout(ANSWER_TIMEOUT_S),
            peer_session(conf, Purpose.READ, ANSWER_TIMEOUT_S) as session,
        ):
            report = await session.mounts(devices)
            assert session.peer is not None
            node = session.peer.node
    except TimeoutError:
        return PeerUnknown(f"{where}: no answer within {ANSWER_TIMEOUT_S:g} s")
    except ProtocolError as exc:
        return PeerUnknown(
            f"{where}: {exc} (the peer's bmsync may be older: install the same version on both)"
        )
    except BmsyncError as exc:
        return PeerUnknown(f"{where}: {exc}")
    log.info(
        "peer_mounts",
        peer=node,
        mounted={d.device: d.mount_points for d in report.devices if d.mount_points},
    )
    return PeerMounts(
        node,
        mounted={d.device: tuple(d.mount_points) for d in report.devices if d.mount_points},
        absent=tuple(d.device for d in report.devices if not d.present),
    )
