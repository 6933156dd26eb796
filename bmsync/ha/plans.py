"""HA operations as explicit plans: a list of steps, each run on one node
and each with its undo, built from what both nodes reported (their
``NodeFacts``). Pure: ``bmsync.ha.operation`` runs a plan, and undoes the
steps done, in reverse, when one fails; ``--dry-run`` prints it.

A switchover (both nodes up, planned) moves everything from the active
node O to the passive node N:

    O  drain: final sync, pause, final check  (undo: resume)
    O  stop the services                      (undo: start them)
    O  release the VIP                        (undo: hold it)
    O  unmount the storage                    (undo: mount it)
    O  demote                                 (undo: promote)
    N  mount the storage (N asks O first)     (undo: unmount it)
    N  hold the VIP                           (undo: release it)
    N  start the services                     (undo: stop them)
    N  promote (a new epoch)                  (undo: demote)
    O  lift the pause: it now receives from N
"""

from __future__ import annotations

from dataclasses import dataclass

from bmsync.core.errors import HaRefused
from bmsync.core.ha_frames import HaAction, NodeFacts
from bmsync.core.roles import Role

UNDO: dict[HaAction, HaAction | None] = {
    HaAction.STATUS: None,
    HaAction.DRAIN: HaAction.RESUME,
    HaAction.RESUME: None,
    HaAction.SERVICES_STOP: HaAction.SERVICES_START,
    HaAction.SERVICES_START: HaAction.SERVICES_STOP,
    HaAction.VIP_DOWN: HaAction.VIP_UP,
    HaAction.VIP_UP: HaAction.VIP_DOWN,
    HaAction.STORAGE_UNMOUNT: HaAction.STORAGE_MOUNT,
    HaAction.STORAGE_MOUNT: HaAction.STORAGE_UNMOUNT,
    HaAction.DEMOTE: HaAction.PROMOTE,
    HaAction.PROMOTE: HaAction.DEMOTE,
    HaAction.FENCE_PEER: None,  # a powered-off peer is not powered on again
    HaAction.STORAGE_MOUNT_PEER_DOWN: HaAction.STORAGE_UNMOUNT,
}

WHAT: dict[HaAction, str] = {
    HaAction.STATUS: "report its state",
    HaAction.DRAIN: "final sync to the peer, pause sync, final check of the peer's tree",
    HaAction.RESUME: "lift the pause of sync",
    HaAction.SERVICES_STOP: "stop the services (ha.services.stop)",
    HaAction.SERVICES_START: "start the services (ha.services.start)",
    HaAction.VIP_DOWN: "release the VIP",
    HaAction.VIP_UP: "hold the VIP, announced by gratuitous ARP",
    HaAction.STORAGE_UNMOUNT: "unmount the shared storage",
    HaAction.STORAGE_MOUNT: "mount the shared storage (checked, once the peer says it has none)",
    HaAction.DEMOTE: "demote: passive, its daemon stands by",
    HaAction.PROMOTE: "promote at a new epoch: its daemon syncs from there",
    HaAction.FENCE_PEER: "fence the peer: power it off through its BMC, confirmed off",
    HaAction.STORAGE_MOUNT_PEER_DOWN: "mount the shared storage (checked; the peer is down)",
}


@dataclass(frozen=True)
class Step:
    node: str
    action: HaAction

    @property
    def undo(self) -> HaAction | None:
        return UNDO[self.action]

    def describe(self) -> str:
        return f"{self.node}: {WHAT[self.action]}"


@dataclass(frozen=True)
class Plan:
    name: str
    steps: tuple[Step, ...]

    def lines(self) -> list[str]:
        out = [f"{self.name}, {len(self.steps)} steps (each undone, in reverse, if a later fails):"]
        for number, step in enumerate(self.steps, 1):
            undo = f"  [undo: {WHAT[step.undo]}]" if step.undo is not None else ""
            out.append(f"  {number:2}. {step.describe()}{undo}")
        return out


def switchover_plan(here: NodeFacts, peer: NodeFacts) -> Plan:
    """The switchover from whichever of the two is active to the other.
    HaRefused, saying what to do, when the two are not one active and one
    passive, ready to hand over."""
    for facts in (here, peer):
        if facts.maintenance:
            raise HaRefused(
                f"{facts.node} is in maintenance: no HA operation runs until "
                "'bmsync maintenance off'"
            )
        if facts.stale:
            raise HaRefused(
                f"{facts.node} is stale (a promotion above its own was seen): settle the roles "
                "first ('bmsync status' on it says how)"
            )
    roles = {here.role, peer.role}
    if roles != {Role.ACTIVE, Role.PASSIVE}:
        both = "active" if here.role is Role.ACTIVE else "passive"
        raise HaRefused(
            f"{here.node} and {peer.node} are both {both}: a switchover moves the active role "
            "from one node to the other; 'bmsync status' on each says what to do first"
        )
    old, new = (here, peer) if here.role is Role.ACTIVE else (peer, here)
    if old.daemon in ("stopped", "suspended", "disconnected"):
        raise HaRefused(
            f"the daemon on {old.node} is {old.daemon}: the final sync cannot run. "
            f"{_daemon_advice(old)}, then retry"
        )
    o, n = old.node, new.node
    steps = (
        Step(o, HaAction.DRAIN),
        Step(o, HaAction.SERVICES_STOP),
        Step(o, HaAction.VIP_DOWN),
        Step(o, HaAction.STORAGE_UNMOUNT),
        Step(o, HaAction.DEMOTE),
        Step(n, HaAction.STORAGE_MOUNT),
        Step(n, HaAction.VIP_UP),
        Step(n, HaAction.SERVICES_START),
        Step(n, HaAction.PROMOTE),
        Step(o, HaAction.RESUME),
    )
    return Plan(f"switchover {o} -> {n}", steps)


def _daemon_advice(facts: NodeFacts) -> str:
    if facts.daemon == "stopped":
        return f"Start it ('systemctl start bmsync' on {facts.node})"
    return f"See why with 'bmsync status' on {facts.node} and clear it"


def takeover_plan(here: NodeFacts, peer: str, fencing: bool) -> Plan:
    """The takeover by this (passive) node of a peer that is lost: fence it
    first when fencing is configured (else the operator has said it is
    powered off), then the storage, the VIP, the services, the promotion."""
    if here.maintenance:
        raise HaRefused(
            f"{here.node} is in maintenance: no HA operation runs until 'bmsync maintenance off'"
        )
    if here.role is Role.ACTIVE and not here.stale:
        raise HaRefused(
            f"{here.node} is the active node already (epoch {here.epoch}): nothing to take over"
        )
    me = here.node
    fence = (Step(me, HaAction.FENCE_PEER),) if fencing else ()
    steps = (
        *fence,
        Step(me, HaAction.STORAGE_MOUNT_PEER_DOWN),
        Step(me, HaAction.VIP_UP),
        Step(me, HaAction.SERVICES_START),
        Step(me, HaAction.PROMOTE),
    )
    return Plan(f"takeover from {peer} by {me}", steps)
