"""The split-brain guard (README, "Roles, epochs and the guard"): may
this node send? Pure: observations in, decisions out; the caller persists
``NodeRole`` and passes the time in. (Whether a node accepts a writer is
``bmsync.core.roles.judge_sender``'s answer, from its persisted role.)

The guard's state is the set of suspicions raised (each with its reason
and the time it was first raised) and the maintenance switch; its
``GuardState`` follows: MAINTENANCE while the switch is on, else SUSPENDED
while any suspicion is raised, else SYNCING. ``Guard.starting`` raises
vip-unchecked when a VIP is configured (nothing is sent before a first
check) and stale when the persisted role is stale.

Each observation is one event (``classify``). ``TABLE`` says what an event
does: first its action, then, for each suspicion (column), its next state:

    +   raised (its first time kept, its reason updated)
    -   cleared
    .   unchanged
    -s  cleared unless this node is stale (after the action)
    -v  cleared if the last VIP check showed nothing wrong (after the action)

    event                 peer-active stale vip-elsewhere vip-missing vip-unchecked  action
    confirmed             -           -s    -v            -v          .              welcomed
    welcomed              .           .     .             .           .              welcomed
    refused-stale         .           +     .             .           .              refused
    refused-by-active     +           .     .             .           .              refused
    refused-as-sender     +           .     .             .           .              refused
    refused               .           .     .             .           .              refused
    lost                  .           .     .             .           .              none
    vip-ignored           .           .     .             .           .              none
    vip-clean             .           .     .             .           -              vip-clean
    vip-elsewhere         .           .     +             .           -              vip-doubtful
    vip-missing           .           .     .             +           -              vip-doubtful
    vip-elsewhere-missing .           .     +             +           -              vip-doubtful
    vip-check-failed      .           .     .             .           +              vip-doubtful
    fenced                -           -s    -             -v          .              fenced
    maintenance-on        .           .     .             .           .              maintenance-on
    maintenance-off       .           .     .             .           .              maintenance-off
    forced                -           -s    -             -           -              forced
    role-active           .           -     .             .           .              role
    role-stale            .           +     .             .           .              role
    role-passive          .           -     .             -           .              role

Events (``Event``), from observations:

- confirmed: ``PeerWelcomed`` while this node is active, the peer having
  seen nothing above this node's stamp (evidence that it is passive below);
  welcomed: any other ``PeerWelcomed``;
- refused-stale: a ``Refusal`` after which this node is stale (the peer has
  seen a promotion above it); otherwise, if the refusal suspects a
  split-brain (``Refusal.suspects_split_brain``), refused-by-active when the
  peer claims active, refused-as-sender when not; refused: any other;
- lost: ``PeerLost`` (no conflict: roles were never compared);
- vip-ignored: ``VipSeen`` or ``VipCheckFailed`` with no VIP configured;
- ``VipSeen``: vip-elsewhere when other MACs answer for the VIP,
  vip-missing when this node is active and does not hold it, both, or
  vip-clean; vip-check-failed: ``VipCheckFailed``;
- fenced: ``PeerFenced``; maintenance-on/-off: ``MaintenanceSet``; forced:
  ``ForcedResume``;
- ``RoleChanged`` to an active role (role-active), a stale one
  (role-stale), or a passive one (role-passive).

Actions: welcomed (record the peer and what it has seen; this node learns
that stamp), refused (the same, by ``NodeRole.learn``), vip-clean and
vip-doubtful (record whether the VIP check showed nothing wrong), fenced
(a fenced peer clears the VIP's doubt only when no VIP is configured; it
clears vip-elsewhere outright: the other MAC seen was the peer's, now off,
and any other host answering is raised again by the next VIP check),
maintenance-on/-off (the switch), forced (record the operator's reason),
role (take the new role), none.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

from bmsync.core.observations import (
    ForcedResume,
    MaintenanceSet,
    Observation,
    PeerFenced,
    PeerLost,
    PeerWelcomed,
    RoleChanged,
    VipCheckFailed,
    VipSeen,
)
from bmsync.core.roles import NO_STAMP, NodeRole, Refusal, Role, Stamp
from bmsync.core.suspicions import Suspicion, clears, why


class GuardState(enum.StrEnum):
    SYNCING = "syncing"
    SUSPENDED = "suspended"
    MAINTENANCE = "maintenance"


# -- the transition table ----------------------------------------------------


class Event(enum.StrEnum):
    """What an observation means to the guard (``classify``)."""

    CONFIRMED = "confirmed"
    WELCOMED = "welcomed"
    REFUSED_STALE = "refused-stale"
    REFUSED_BY_ACTIVE = "refused-by-active"
    REFUSED_AS_SENDER = "refused-as-sender"
    REFUSED = "refused"
    LOST = "lost"
    VIP_IGNORED = "vip-ignored"
    VIP_CLEAN = "vip-clean"
    VIP_ELSEWHERE = "vip-elsewhere"
    VIP_MISSING = "vip-missing"
    VIP_ELSEWHERE_MISSING = "vip-elsewhere-missing"
    VIP_CHECK_FAILED = "vip-check-failed"
    FENCED = "fenced"
    MAINTENANCE_ON = "maintenance-on"
    MAINTENANCE_OFF = "maintenance-off"
    FORCED = "forced"
    ROLE_ACTIVE = "role-active"
    ROLE_STALE = "role-stale"
    ROLE_PASSIVE = "role-passive"


class Effect(enum.StrEnum):
    """What an event does to one suspicion."""

    RAISE = "+"
    CLEAR = "-"
    KEEP = "."
    CLEAR_UNLESS_STALE = "-s"
    CLEAR_IF_VIP_CLEAN = "-v"


class Action(enum.StrEnum):
    """What an event records, before its effects on the suspicions."""

    NONE = "none"
    WELCOMED = "welcomed"
    REFUSED = "refused"
    VIP_CLEAN = "vip-clean"
    VIP_DOUBTFUL = "vip-doubtful"
    FENCED = "fenced"
    MAINTENANCE_ON = "maintenance-on"
    MAINTENANCE_OFF = "maintenance-off"
    FORCED = "forced"
    ROLE = "role"


class Row(NamedTuple):
    effects: tuple[Effect, Effect, Effect, Effect, Effect]  # one per Suspicion, in order
    action: Action


_R, _C, _K = Effect.RAISE, Effect.CLEAR, Effect.KEEP
_S, _V = Effect.CLEAR_UNLESS_STALE, Effect.CLEAR_IF_VIP_CLEAN
_A = Action

# The module docstring's table, which a test checks against this one.
# fmt: off
TABLE: dict[Event, Row] = {
    # columns: peer-active, stale, vip-elsewhere, vip-missing, vip-unchecked; then the action
    Event.CONFIRMED:             Row((_C, _S, _V, _V, _K), _A.WELCOMED),
    Event.WELCOMED:              Row((_K, _K, _K, _K, _K), _A.WELCOMED),
    Event.REFUSED_STALE:         Row((_K, _R, _K, _K, _K), _A.REFUSED),
    Event.REFUSED_BY_ACTIVE:     Row((_R, _K, _K, _K, _K), _A.REFUSED),
    Event.REFUSED_AS_SENDER:     Row((_R, _K, _K, _K, _K), _A.REFUSED),
    Event.REFUSED:               Row((_K, _K, _K, _K, _K), _A.REFUSED),
    Event.LOST:                  Row((_K, _K, _K, _K, _K), _A.NONE),
    Event.VIP_IGNORED:           Row((_K, _K, _K, _K, _K), _A.NONE),
    Event.VIP_CLEAN:             Row((_K, _K, _K, _K, _C), _A.VIP_CLEAN),
    Event.VIP_ELSEWHERE:         Row((_K, _K, _R, _K, _C), _A.VIP_DOUBTFUL),
    Event.VIP_MISSING:           Row((_K, _K, _K, _R, _C), _A.VIP_DOUBTFUL),
    Event.VIP_ELSEWHERE_MISSING: Row((_K, _K, _R, _R, _C), _A.VIP_DOUBTFUL),
    Event.VIP_CHECK_FAILED:      Row((_K, _K, _K, _K, _R), _A.VIP_DOUBTFUL),
    Event.FENCED:                Row((_C, _S, _C, _V, _K), _A.FENCED),
    Event.MAINTENANCE_ON:        Row((_K, _K, _K, _K, _K), _A.MAINTENANCE_ON),
    Event.MAINTENANCE_OFF:       Row((_K, _K, _K, _K, _K), _A.MAINTENANCE_OFF),
    Event.FORCED:                Row((_C, _S, _C, _C, _C), _A.FORCED),
    Event.ROLE_ACTIVE:           Row((_K, _C, _K, _K, _K), _A.ROLE),
    Event.ROLE_STALE:            Row((_K, _R, _K, _K, _K), _A.ROLE),
    Event.ROLE_PASSIVE:          Row((_K, _C, _K, _C, _K), _A.ROLE),
}
# fmt: on


def classify(obs: Observation, guard: Guard) -> Event:
    """Which event ``obs`` is to ``guard`` (before its action)."""
    role = guard.role
    match obs:
        case PeerWelcomed(peer_seen=seen):
            confirmed = role.role is Role.ACTIVE and seen <= role.stamp
            return Event.CONFIRMED if confirmed else Event.WELCOMED
        case Refusal():
            if role.learn(obs).is_stale():
                return Event.REFUSED_STALE
            if not obs.suspects_split_brain:
                return Event.REFUSED
            claims_active = obs.role is Role.ACTIVE
            return Event.REFUSED_BY_ACTIVE if claims_active else Event.REFUSED_AS_SENDER
        case PeerLost():
            return Event.LOST
        case VipSeen() | VipCheckFailed() if not guard.vip_configured:
            return Event.VIP_IGNORED
        case VipSeen(held=held, other_macs=others):
            missing = role.role is Role.ACTIVE and not held
            if others:
                return Event.VIP_ELSEWHERE_MISSING if missing else Event.VIP_ELSEWHERE
            return Event.VIP_MISSING if missing else Event.VIP_CLEAN
        case VipCheckFailed():
            return Event.VIP_CHECK_FAILED
        case PeerFenced():
            return Event.FENCED
        case MaintenanceSet(on=on):
            return Event.MAINTENANCE_ON if on else Event.MAINTENANCE_OFF
        case ForcedResume():
            return Event.FORCED
        case RoleChanged(role=new):
            if new.role is Role.PASSIVE:
                return Event.ROLE_PASSIVE
            return Event.ROLE_STALE if new.is_stale() else Event.ROLE_ACTIVE


# -- the guard ---------------------------------------------------------------


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

    def _apply(self, obs: Observation, now: float) -> str:
        """One step of ``TABLE``: the event's action, then its effect on
        each suspicion; returns the evidence (for the log)."""
        event = classify(obs, self)
        row = TABLE[event]
        self._act(row.action, obs)
        for what, effect in zip(Suspicion, row.effects, strict=True):
            if effect is Effect.RAISE:
                self._raise(what, why(what, obs, self.role), now)
            elif (
                effect is Effect.CLEAR
                or (effect is Effect.CLEAR_UNLESS_STALE and not self.role.is_stale())
                or (effect is Effect.CLEAR_IF_VIP_CLEAN and self._vip_ok)
            ):
                self._raised.pop(what, None)
        return _evidence(event, obs)

    def _act(self, action: Action, obs: Observation) -> None:
        if action is Action.WELCOMED and isinstance(obs, PeerWelcomed):
            self.peer, self.peer_seen = obs.peer, obs.peer_seen
            self.role = self.role.saw(obs.peer_seen)
        elif action is Action.REFUSED and isinstance(obs, Refusal):
            self.peer, self.peer_seen = obs.peer, obs.seen
            self.role = self.role.learn(obs)
        elif action in (Action.VIP_CLEAN, Action.VIP_DOUBTFUL):
            self._vip_ok = action is Action.VIP_CLEAN  # unknown is not clean
        elif action is Action.FENCED:
            self._vip_ok = self._vip_ok or not self.vip_configured
        elif action in (Action.MAINTENANCE_ON, Action.MAINTENANCE_OFF):
            self.maintenance = action is Action.MAINTENANCE_ON
        elif action is Action.FORCED and isinstance(obs, ForcedResume):
            self.forced_reason = obs.reason
        elif action is Action.ROLE and isinstance(obs, RoleChanged):
            self.role = obs.role
        elif action is not Action.NONE:
            raise AssertionError(f"action {action} on {obs}")


def _evidence(event: Event, obs: Observation) -> str:
    match obs:
        case _ if event is Event.VIP_IGNORED:
            return "VIP observation ignored: no VIP configured"
        case PeerWelcomed(peer=peer, peer_seen=seen) if event is Event.CONFIRMED:
            return f"{peer} confirmed passive; the highest it has seen is {seen}"
        case PeerWelcomed(peer=peer, peer_seen=seen):
            return f"{peer} welcomed us, having seen {seen}"
        case Refusal(peer=peer, role=peer_role, seen=seen):
            return f"{peer} ({peer_role}, has seen {seen}) refused: {obs.reason}"
        case PeerLost(detail=detail):
            return f"peer unreachable: {detail}"
        case VipSeen(held=held, other_macs=others):
            return f"VIP held={held}, other MACs={list(others) or 'none'}"
        case VipCheckFailed(reason=reason):
            return f"VIP check failed: {reason}"
        case PeerFenced(peer=peer):
            return f"{peer} fenced (powered off, confirmed)"
        case MaintenanceSet(on=on):
            return f"maintenance {'on' if on else 'off'}"
        case ForcedResume(reason=reason):
            return f"forced by an operator: {reason}"
        case RoleChanged(role=role):
            return f"role now {role.role} ({role.stamp})"
