"""The split-brain guard (README, "Roles, epochs and the guard"): this
node's state machine (SYNCING, SUSPENDED, MAINTENANCE), fed by
observations, each transition carrying its evidence. Pure: observations
in, decisions out; the caller persists ``NodeRole`` and passes the time in.
Roles, epochs and the handshake rule are ``bmsync.core.roles``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from bmsync.core.roles import NO_STAMP, NodeRole, Refusal, Role, Stamp

# -- the guard (on this node) ------------------------------------------------


class GuardState(enum.StrEnum):
    SYNCING = "syncing"
    SUSPENDED = "suspended"
    MAINTENANCE = "maintenance"


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


# -- observations --


@dataclass(frozen=True)
class PeerWelcomed:
    """A handshake succeeded: the peer is passive and accepted our stamp."""

    peer: str
    peer_seen: Stamp


@dataclass(frozen=True)
class PeerLost:
    """The peer cannot be reached (no conflict: roles were never compared)."""

    detail: str


@dataclass(frozen=True)
class VipSeen:
    """Whether this node holds the VIP, and MACs other than ours that
    answer for it (duplicate address detection)."""

    held: bool
    other_macs: tuple[str, ...] = ()


@dataclass(frozen=True)
class VipCheckFailed:
    """The VIP check could not run (``ip`` or ``arping`` failed, the
    interface is missing): nothing rules a split-brain out, so it is a
    suspicion (fail closed) until a check works again."""

    reason: str


@dataclass(frozen=True)
class PeerFenced:
    """Fencing confirmed the peer powered off."""

    peer: str


@dataclass(frozen=True)
class MaintenanceSet:
    on: bool


@dataclass(frozen=True)
class ForcedResume:
    """An operator clears every suspicion, with a reason for the record."""

    reason: str


@dataclass(frozen=True)
class RoleChanged:
    """This node was promoted or demoted (persisted by the caller)."""

    role: NodeRole


Observation = (
    PeerWelcomed
    | Refusal  # the peer refused this node as a sender
    | PeerLost
    | VipSeen
    | VipCheckFailed
    | PeerFenced
    | MaintenanceSet
    | ForcedResume
    | RoleChanged
)


@dataclass(frozen=True)
class Transition:
    """One change of state, with what caused it (for the log)."""

    old: GuardState
    new: GuardState
    reason: str
    evidence: str


@dataclass
class _Raised:
    reason: str
    since: float


@dataclass
class Guard:
    """May this node send (``may_send``)? (Whether it accepts a writer is
    ``judge_sender``'s answer, from its persisted role alone.)

    Suspicions are raised by observations and cleared only by evidence
    (``clears``) or an operator's ``ForcedResume``; each is kept with its
    reason and time. ``observe`` returns the transitions it caused."""

    role: NodeRole
    vip_configured: bool = False
    maintenance: bool = False
    peer_seen: Stamp = NO_STAMP  # the peer's highest_seen, as last reported
    peer: str = ""  # the peer's node id, once it has answered
    forced_reason: str | None = None
    _raised: dict[Suspicion, _Raised] = field(default_factory=dict)
    _vip_ok: bool = True  # the last VIP observation showed nothing wrong
    _state_since: float = 0.0

    @classmethod
    def starting(cls, role: NodeRole, now: float, vip_configured: bool = False) -> Guard:
        """The guard of a node (re)starting from its persisted role: a stale
        active stays suspended across restarts, and with a VIP configured
        nothing is sent before the VIP has been checked once."""
        guard = cls(role, vip_configured, _state_since=now)
        if vip_configured:
            guard._vip_ok = False
            guard._raise(Suspicion.VIP_UNCHECKED, "the VIP has not been checked yet", now)
        if role.is_stale():
            guard._raise(
                Suspicion.STALE,
                f"this node is stale: it has seen {role.highest_seen}, above its own {role.stamp}",
                now,
            )
        return guard

    @property
    def state(self) -> GuardState:
        if self.maintenance:
            return GuardState.MAINTENANCE
        return GuardState.SUSPENDED if self._raised else GuardState.SYNCING

    @property
    def since(self) -> float:
        return self._state_since

    @property
    def suspicions(self) -> dict[Suspicion, str]:
        return {s: r.reason for s, r in self._raised.items()}

    @property
    def reason(self) -> str | None:
        if self.maintenance:
            return "maintenance mode: sync is off on this node"
        if not self._raised:
            return None
        first = min(self._raised.values(), key=lambda r: r.since)
        return first.reason

    @property
    def clears(self) -> list[str]:
        return [clears(s, self.role, self.peer) for s in self._raised]

    @property
    def may_send(self) -> bool:
        return self.role.role is Role.ACTIVE and self.state is GuardState.SYNCING

    def observe(self, obs: Observation, now: float) -> list[Transition]:
        before = self.state
        evidence = self._apply(obs, now)
        after = self.state
        if before is after:
            return []
        self._state_since = now
        return [Transition(before, after, self.reason or "no suspicion left", evidence)]

    def _raise(self, what: Suspicion, reason: str, now: float) -> None:
        if what not in self._raised:
            self._raised[what] = _Raised(reason, now)
        else:
            self._raised[what].reason = reason

    def _clear_on_evidence(self) -> None:
        """The peer is confirmed passive below us, or fenced."""
        self._raised.pop(Suspicion.PEER_ACTIVE, None)
        if not self.role.is_stale():
            self._raised.pop(Suspicion.STALE, None)
        if self._vip_ok:
            self._raised.pop(Suspicion.VIP_ELSEWHERE, None)
            self._raised.pop(Suspicion.VIP_MISSING, None)

    def _apply(self, obs: Observation, now: float) -> str:
        match obs:
            case PeerWelcomed(peer=peer, peer_seen=seen):
                self.peer, self.peer_seen = peer, seen
                self.role = self.role.saw(seen)
                if seen <= self.role.stamp and self.role.role is Role.ACTIVE:
                    self._clear_on_evidence()
                    return f"{peer} confirmed passive; the highest it has seen is {seen}"
                return f"{peer} welcomed us, having seen {seen}"
            case Refusal(peer=peer, role=peer_role, seen=seen):
                self.peer, self.peer_seen = peer, seen
                self.role = self.role.learn(obs)
                said = f"{peer} ({peer_role}, has seen {seen}) refused: {obs.reason}"
                if self.role.is_stale():
                    claim = (
                        f"split-brain suspected: {peer} claims active too; "
                        if peer_role is Role.ACTIVE
                        else ""
                    )
                    self._raise(
                        Suspicion.STALE,
                        f"{claim}this node is stale: {peer} has seen "
                        f"{self.role.highest_seen}, above this node's {self.role.stamp}",
                        now,
                    )
                elif obs.suspects_split_brain and peer_role is Role.ACTIVE:
                    self._raise(
                        Suspicion.PEER_ACTIVE,
                        f"split-brain suspected: {peer} claims active too (has seen {seen}; "
                        f"this node is {self.role.stamp})",
                        now,
                    )
                elif obs.suspects_split_brain:
                    self._raise(
                        Suspicion.PEER_ACTIVE,
                        f"split-brain suspected: {peer} refused this node as a sender "
                        f"({obs.reason})",
                        now,
                    )
                return said
            case PeerLost(detail=detail):
                return f"peer unreachable: {detail}"
            case VipSeen(held=held, other_macs=others):
                if not self.vip_configured:
                    return "VIP observation ignored: no VIP configured"
                self._vip_ok = not others and (held or self.role.role is not Role.ACTIVE)
                self._raised.pop(Suspicion.VIP_UNCHECKED, None)  # the check works again
                if others:
                    self._raise(
                        Suspicion.VIP_ELSEWHERE,
                        f"split-brain suspected: the VIP also answers from {', '.join(others)}",
                        now,
                    )
                if self.role.role is Role.ACTIVE and not held:
                    self._raise(
                        Suspicion.VIP_MISSING,
                        "this node is active but does not hold the VIP",
                        now,
                    )
                return f"VIP held={held}, other MACs={list(others) or 'none'}"
            case VipCheckFailed(reason=reason):
                if not self.vip_configured:
                    return "VIP observation ignored: no VIP configured"
                self._vip_ok = False  # unknown is not clean
                self._raise(
                    Suspicion.VIP_UNCHECKED,
                    f"the VIP check cannot run, so a split-brain cannot be ruled out: {reason}",
                    now,
                )
                return f"VIP check failed: {reason}"
            case PeerFenced(peer=peer):
                self._vip_ok = self._vip_ok or not self.vip_configured
                self._clear_on_evidence()
                return f"{peer} fenced (powered off, confirmed)"
            case MaintenanceSet(on=on):
                self.maintenance = on
                return f"maintenance {'on' if on else 'off'}"
            case ForcedResume(reason=reason):
                # Not past STALE: the peer would refuse a superseded sender
                # anyway; demote this node (and promote it again if it must
                # be the active one).
                stale = self._raised.get(Suspicion.STALE) if self.role.is_stale() else None
                self._raised.clear()
                if stale is not None:
                    self._raised[Suspicion.STALE] = stale
                self.forced_reason = reason
                return f"forced by an operator: {reason}"
            case RoleChanged(role=role):
                self.role = role
                if not role.is_stale():
                    self._raised.pop(Suspicion.STALE, None)
                if role.role is Role.PASSIVE:
                    self._raised.pop(Suspicion.VIP_MISSING, None)
                return f"role now {role.role} ({role.stamp})"
