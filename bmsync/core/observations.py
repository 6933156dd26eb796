"""What the split-brain guard observes (``bmsync.core.guard``): one
dataclass per kind of observation, and a peer's ``Refusal``
(``bmsync.core.roles``)."""

from __future__ import annotations

from dataclasses import dataclass

from bmsync.core.roles import NodeRole, Refusal, Stamp


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
