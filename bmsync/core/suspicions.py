"""The guard's suspicions (``bmsync.core.guard``): why each is raised
(``why``), and what clears it, as commands an operator can follow
(``clears``)."""

from __future__ import annotations

import enum

from bmsync.core.observations import Observation, RoleChanged, VipCheckFailed, VipSeen
from bmsync.core.roles import NodeRole, Refusal, Role


class Suspicion(enum.StrEnum):
    PEER_ACTIVE = "peer-active"  # the peer refused us: it is active too
    STALE = "stale"  # a higher promotion exists: this node was superseded
    VIP_ELSEWHERE = "vip-elsewhere"  # the VIP answers from another MAC
    VIP_MISSING = "vip-missing"  # active, but this node does not hold the VIP
    VIP_UNCHECKED = "vip-unchecked"  # the VIP check cannot run (or has not yet)


def clears(what: Suspicion, role: NodeRole, peer: str) -> str:
    """What clears a suspicion, as commands an operator can follow (each
    is checked by a test that follows it)."""
    peer = peer or "the peer"
    if what is Suspicion.PEER_ACTIVE:
        return (
            f"'bmsync demote' on {peer} if this node must be the active one (its next "
            f"handshake, within peer.reconnect_max_s, then finds {peer} passive below "
            f"{role.stamp}); or 'bmsync demote' here if {peer} must be"
        )
    if what is Suspicion.STALE:
        seen = role.highest_seen
        return (
            f"'bmsync demote' here if {seen.node or peer} is the active node now; if this "
            f"node must be the active one: 'bmsync demote' on {seen.node or peer}, then "
            f"'bmsync promote' here (epoch {seen.epoch + 1}, above {seen})"
        )
    if what is Suspicion.VIP_ELSEWHERE:
        return (
            "no other host answering for the VIP (take it off the other node: 'ip addr del' "
            "there), seen by the next VIP check, then the peer confirmed passive at the next "
            "handshake; or 'bmsync resume --force --reason ...'"
        )
    if what is Suspicion.VIP_MISSING:
        return (
            "this node holding the VIP again ('ip addr add' it here), seen by the next VIP "
            "check, then the peer confirmed passive at the next handshake; or 'bmsync "
            "demote' here if the node holding it is the active one"
        )
    return (
        "the VIP check working again (fix ha.vip in the config and 'systemctl reload "
        "bmsync'), or, to sync without the VIP guard, removing ha.vip from the config "
        "and 'systemctl restart bmsync'"
    )


def why(what: Suspicion, obs: Observation, me: NodeRole) -> str:
    """The reason recorded when ``obs`` raises ``what`` on a node whose role
    is now ``me``."""
    match obs:
        case Refusal(peer=peer) if what is Suspicion.STALE:
            claim = (
                f"split-brain suspected: {peer} claims active too; "
                if obs.role is Role.ACTIVE
                else ""
            )
            return (
                f"{claim}this node is stale: {peer} has seen {me.highest_seen}, "
                f"above this node's {me.stamp}"
            )
        case Refusal(peer=peer, role=Role.ACTIVE):
            return (
                f"split-brain suspected: {peer} claims active too (has seen {obs.seen}; "
                f"this node is {me.stamp})"
            )
        case Refusal(peer=peer):
            return f"split-brain suspected: {peer} refused this node as a sender ({obs.reason})"
        case VipSeen(other_macs=others) if what is Suspicion.VIP_ELSEWHERE:
            return f"split-brain suspected: the VIP also answers from {', '.join(others)}"
        case VipSeen():
            return "this node is active but does not hold the VIP"
        case VipCheckFailed(reason=reason):
            return f"the VIP check cannot run, so a split-brain cannot be ruled out: {reason}"
        case RoleChanged() if what is Suspicion.STALE:
            return f"this node is stale: it has seen {me.highest_seen}, above its own {me.stamp}"
    raise AssertionError(f"nothing raises {what} on {obs}")
