"""Roles and epochs (README, "Roles, epochs and the guard"), apart from
the wire format that carries them. Pure: the caller persists ``NodeRole``.

- ``Role``, ``Stamp`` (a promotion: epoch, node) and ``MAX_EPOCH``, the
  highest epoch a frame may carry or a promotion reach (``check_epoch``);
- ``NodeRole``: what a node persists (role, epoch, highest ``Stamp`` seen)
  and how promotion and demotion change it;
- ``judge_sender``: the agent's handshake rule, which decides whether a
  sender may write here;
- ``Refusal``: a refusal as the sender receives it, which says whether it
  suspects a split-brain and teaches the sender's ``NodeRole`` (``learn``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import NamedTuple

from bmsync.core.errors import EpochExhausted, ProtocolError, RoleStateError

# The highest epoch (fencing token) a frame may carry and a promotion may
# reach: 2**53 - 1. msgpack stops at 2**64 - 1 and a promotion adds 1, so an
# epoch at the msgpack limit, accepted, made the next promotion unsendable
# (OverflowError); role.json is JSON, whose common readers (jq, JavaScript)
# are exact only up to 2**53. No honest pair comes near it (a promotion a
# second for 285 million years): a larger epoch is a broken or hostile
# sender, refused before anything is stored.
MAX_EPOCH = 2**53 - 1


def check_epoch(value: int, what: str) -> None:
    """An epoch from the wire: 0 to ``MAX_EPOCH``, or a ProtocolError."""
    if not 0 <= value <= MAX_EPOCH:
        raise ProtocolError(
            f"{what} {value} is out of range (0 to {MAX_EPOCH}): a broken or hostile sender; "
            "nothing of it is recorded"
        )


class Role(enum.StrEnum):
    ACTIVE = "active"
    PASSIVE = "passive"


class Stamp(NamedTuple):
    """A promotion: its epoch, then the node promoted (which breaks ties
    between two promotions to the same epoch). Ordered like a tuple."""

    epoch: int
    node: str

    def __str__(self) -> str:
        return f"epoch {self.epoch} ({self.node})" if self.node else f"epoch {self.epoch}"


NO_STAMP = Stamp(0, "")


class AlreadyActive(Exception):
    """``promote`` on an active node that nothing has superseded: nothing
    changes."""


@dataclass(frozen=True)
class NodeRole:
    """What a node persists under its state_dir. ``epoch`` is the epoch of
    its last promotion; ``highest_seen`` the highest stamp it has seen: its
    own promotions, the senders it accepted, and those reported to it in
    refusals."""

    node: str
    role: Role = Role.PASSIVE
    epoch: int = 0
    highest_seen: Stamp = NO_STAMP

    @property
    def stamp(self) -> Stamp:
        return Stamp(self.epoch, self.node)

    def promote(self) -> NodeRole:
        """Active, with an epoch above every one seen: a fencing token no
        earlier promotion of either node can equal. A stale active node is
        promoted again, above the promotion that superseded it."""
        if self.role is Role.ACTIVE and not self.is_stale():
            raise AlreadyActive(f"{self.node} is already active ({self.stamp})")
        epoch = self.highest_seen.epoch + 1
        if epoch > MAX_EPOCH:
            raise EpochExhausted(
                f"{self.node} cannot be promoted: it has seen {self.highest_seen}, and the "
                f"next epoch would pass the highest bmsync allows ({MAX_EPOCH}). No honest "
                "pair gets there: a sender holding the SSH key raised it. Replace the key "
                "first (README, 'A leaked key'); then here: 'bmsync demote' if this node is "
                "active, 'bmsync reset-epoch --to EPOCH --reason \"...\"' with EPOCH the last "
                "promotion you trust, and 'bmsync promote'"
            )
        return replace(self, role=Role.ACTIVE, epoch=epoch, highest_seen=Stamp(epoch, self.node))

    def demote(self) -> NodeRole:
        return replace(self, role=Role.PASSIVE)

    def reset_seen(self, epoch: int) -> NodeRole:
        """An operator lowers ``highest_seen`` to ``epoch`` (after a sender
        with a leaked key raised it: README, "A leaked key"), and this
        node's own epoch with it if higher. Only on a passive node (an
        active one would go on sending at the old epoch): ``demote`` first.
        Unchanged if nothing is above ``epoch``."""
        if self.role is Role.ACTIVE:
            raise RoleStateError(
                f"{self.node} is active ({self.stamp}): reset-epoch only runs on a passive "
                "node; run 'bmsync demote' first, then 'bmsync promote' after the reset"
            )
        if not 0 <= epoch <= MAX_EPOCH:
            raise RoleStateError(f"epoch {epoch} is out of range (0 to {MAX_EPOCH})")
        if self.highest_seen.epoch <= epoch and self.epoch <= epoch:
            return self
        return replace(self, epoch=min(self.epoch, epoch), highest_seen=Stamp(epoch, ""))

    def saw(self, stamp: Stamp) -> NodeRole:
        return self if stamp <= self.highest_seen else replace(self, highest_seen=stamp)

    def learn(self, refusal: Refusal) -> NodeRole:
        """What a peer's refusal teaches this node: the highest promotion
        the peer has seen (which may show this node superseded). The one
        rule for it, applied by the guard and by ``RoleStore.learn``."""
        return self.saw(refusal.seen)

    def is_stale(self) -> bool:
        """Active, but a promotion above its own has been seen: a higher
        epoch, or the same epoch won by the other node's id. Any passive
        node that has seen that promotion refuses it (``judge_sender``)."""
        return self.role is Role.ACTIVE and self.highest_seen > self.stamp


# -- the handshake rule (on the receiving node) ------------------------------


class RefusalCode(enum.StrEnum):
    """Why an agent refused a sender. The first three mean a possible
    split-brain: the sender suspends rather than retrying past them."""

    RECEIVER_ACTIVE = "receiver-active"  # this node is active itself
    SENDER_STALE = "sender-stale"  # a higher promotion has been seen here
    SENDER_NOT_ACTIVE = "sender-not-active"  # the sender does not claim active
    BUSY = "busy"  # another sender holds the lock
    EPOCH_RESET = "epoch-reset"  # an operator lowered highest_seen below the writer
    INCOMPATIBLE = "incompatible"  # protocol version, node ids, root

    @classmethod
    def parse(cls, text: str) -> RefusalCode | None:
        """The code ``text`` names; ``None`` for none, or one this version
        does not know."""
        return next((code for code in cls if code == text), None)


_SPLIT_BRAIN = frozenset(
    {RefusalCode.RECEIVER_ACTIVE, RefusalCode.SENDER_STALE, RefusalCode.SENDER_NOT_ACTIVE}
)


@dataclass(frozen=True)
class Accepted:
    """Write ``role`` (``highest_seen`` raised to the sender) to disk and
    fsync it, then welcome the sender."""

    role: NodeRole


@dataclass(frozen=True)
class Refused:
    code: RefusalCode
    reason: str


@dataclass(frozen=True)
class Refusal:
    """A peer refused this node as a sender, and said who it is (``peer``,
    its ``role``), the highest promotion it has seen and why. ``code`` is
    ``None`` when the peer gave none this version knows."""

    peer: str
    role: Role
    seen: Stamp
    code: RefusalCode | None
    reason: str

    @property
    def suspects_split_brain(self) -> bool:
        """Roles or epochs were compared and disagree: the sender suspends
        rather than retrying past it. The one place this is decided."""
        return self.code in _SPLIT_BRAIN


def judge_sender(me: NodeRole, sender: Stamp, sender_role: Role) -> Accepted | Refused:
    """May ``sender`` write to this node? Only when this node is passive,
    the sender claims active, and its stamp is the highest seen here (or
    equals it: the same sender again)."""
    if me.role is Role.ACTIVE:
        return Refused(
            RefusalCode.RECEIVER_ACTIVE,
            f"{me.node} is active itself ({me.stamp}); two active nodes mean a possible "
            f"split-brain, so it accepts no writes from {sender.node}",
        )
    if sender_role is not Role.ACTIVE:
        return Refused(
            RefusalCode.SENDER_NOT_ACTIVE,
            f"{sender.node} does not claim to be active; only an active node may send",
        )
    if sender < me.highest_seen:
        return Refused(
            RefusalCode.SENDER_STALE,
            f"{sender.node} is active with {sender}, but {me.node} has seen "
            f"{me.highest_seen}: {sender.node} has been superseded and must not write",
        )
    return Accepted(me.saw(sender))
