"""A session with the peer's agent for the HA commands: as this node (its
role and epoch from role.json), opened within a time limit, closed after."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bmsync.config.model import Config
from bmsync.core.errors import BmsyncError, RoleStateError
from bmsync.core.frames import Purpose, Welcome
from bmsync.core.roles import NodeRole
from bmsync.link.session import PeerSession
from bmsync.link.ssh import connect
from bmsync.state.roles import RoleStore


@asynccontextmanager
async def peer_session(
    conf: Config, purpose: Purpose, open_timeout_s: float | None = None
) -> AsyncIterator[PeerSession]:
    """``open_timeout_s``: for the handshake (default: the peer's
    ``connect_timeout_s``). BmsyncError or TimeoutError if it fails."""
    peer = conf.require_peer()
    try:
        me = RoleStore(conf.state_dir, conf.node).load_record(lenient=True)[0]
    except (RoleStateError, OSError):
        me = NodeRole(conf.node)  # this node's role file is the operator's to mend
    channel = await connect(peer)
    session = PeerSession(channel, conf.node, me.epoch, me.role)
    try:
        await asyncio.wait_for(session.open(purpose), open_timeout_s or peer.connect_timeout_s)
        yield session
    finally:
        await session.close()


async def peer_welcome(conf: Config) -> Welcome | str:
    """The peer agent's answer to a read-only handshake (its node, role and
    epoch), or why there was none within ``connect_timeout_s``."""
    try:
        async with peer_session(conf, Purpose.READ) as session:
            assert session.peer is not None
            return session.peer
    except (BmsyncError, TimeoutError) as exc:
        return str(exc) or "no answer"
