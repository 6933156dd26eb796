"""Promote or demote this node: role.json first (under the role lock, so no
write of the agent's falls after it), then the writing session accepted
here is ended when it must be, then the daemon, if one runs, is told and
answers once it acts on it. Used by ``bmsync promote|demote`` and by the
steps of HA operations."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bmsync.config.model import Config
from bmsync.core.errors import DaemonNotRunning
from bmsync.core.roles import AlreadyActive, NodeRole, Role
from bmsync.service import control
from bmsync.service.control import check_answer
from bmsync.state.directory import ensure_state_dir
from bmsync.state.lock import SenderLock
from bmsync.state.roles import RoleStore

# How long `bmsync promote` waits for the writing session it ends.
END_SESSION_WAIT_S = 10.0
# How long a demoted daemon has to finish the batch in flight.
DEMOTE_WAIT_S = 30.0


@dataclass
class RoleChange:
    """What a promote or demote did: ``changed`` (False: already so), and
    the lines an operator reads."""

    changed: bool
    role: NodeRole
    lines: list[str] = field(default_factory=list)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def change_role(conf: Config, change: str, why: str = "") -> RoleChange:
    """``change``: "promote" or "demote"; ``why`` is recorded in role.json."""
    ensure_state_dir(conf.state_dir)
    store = RoleStore(conf.state_dir, conf.node)
    before = store.load_record(lenient=change == "demote")[0]
    if change == "demote" and before.role is Role.PASSIVE:
        line = f"bmsync on {conf.node}: already passive at epoch {before.epoch}; nothing changed"
        return RoleChange(False, before, [line])
    try:
        after = store.update(
            NodeRole.promote if change == "promote" else NodeRole.demote,
            f"{now_iso()} bmsync {change}" + (f" ({why})" if why else ""),
            lenient=change == "demote",  # always safe: this node stops sending
        )
    except AlreadyActive:
        line = (
            f"bmsync on {conf.node}: already active at epoch {before.epoch}, above every "
            f"promotion seen ({before.highest_seen}); nothing changed"
        )
        return RoleChange(False, before, [line])
    lines = [
        f"bmsync on {conf.node}: {after.role} at epoch {after.epoch} "
        f"(highest seen: {after.highest_seen})"
    ]
    if after.role is Role.ACTIVE:
        # a writer accepted here before must not write once this node is active
        ended = SenderLock(conf.state_dir).end_session(END_SESSION_WAIT_S)
        if ended is not None:
            lines.append(f"  {ended}")
    with contextlib.suppress(DaemonNotRunning):
        answer = asyncio.run(control.request(conf.control_socket, "role", DEMOTE_WAIT_S + 10))
        check_answer(answer)
        if answer.get("stopped"):
            lines.append(
                "  the daemon here finished the batch in flight, stopped sending and stands by "
                "(it syncs from here again once promoted)"
            )
        elif after.role is Role.ACTIVE:
            lines.append("  the daemon here syncs from this node now")
    return RoleChange(True, after, lines)
