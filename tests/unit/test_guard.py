"""Roles, epochs, the handshake rule and the guard, one scenario at a time."""

from __future__ import annotations

import pytest

from bmsync.core.errors import EpochExhausted, RoleStateError
from bmsync.core.guard import Guard, GuardState
from bmsync.core.observations import (
    ForcedResume,
    MaintenanceSet,
    PeerFenced,
    PeerLost,
    PeerWelcomed,
    RoleChanged,
    VipCheckFailed,
    VipSeen,
)
from bmsync.core.roles import (
    MAX_EPOCH,
    Accepted,
    AlreadyActive,
    NodeRole,
    Refusal,
    RefusalCode,
    Refused,
    Role,
    Stamp,
    judge_sender,
)
from bmsync.core.suspicions import Suspicion


def test_a_fresh_node_is_passive_at_epoch_0() -> None:
    role = NodeRole("bm1")
    assert (role.role, role.epoch, role.highest_seen) == (Role.PASSIVE, 0, Stamp(0, ""))


def test_promotion_takes_the_epoch_above_every_one_seen() -> None:
    role = NodeRole("bm2").saw(Stamp(4, "bm1")).promote()
    assert (role.role, role.epoch, role.highest_seen) == (Role.ACTIVE, 5, Stamp(5, "bm2"))


def test_promoting_an_active_node_changes_nothing() -> None:
    role = NodeRole("bm1").promote()
    with pytest.raises(AlreadyActive, match="already active"):
        role.promote()


def test_demotion_keeps_the_epochs() -> None:
    role = NodeRole("bm1").promote().demote()
    assert (role.role, role.epoch, role.highest_seen) == (Role.PASSIVE, 1, Stamp(1, "bm1"))


def test_a_passive_node_accepts_the_highest_active_and_remembers_it() -> None:
    verdict = judge_sender(NodeRole("bm2"), Stamp(3, "bm1"), Role.ACTIVE)
    assert isinstance(verdict, Accepted)
    assert verdict.role.highest_seen == Stamp(3, "bm1")
    again = judge_sender(verdict.role, Stamp(3, "bm1"), Role.ACTIVE)  # same sender, same epoch
    assert isinstance(again, Accepted)


@pytest.mark.parametrize(
    ("receiver", "sender", "sender_role", "code"),
    [
        (NodeRole("bm2").promote(), Stamp(9, "bm1"), Role.ACTIVE, RefusalCode.RECEIVER_ACTIVE),
        (NodeRole("bm2").saw(Stamp(5, "bm1")), Stamp(4, "bm1"), Role.ACTIVE, "sender-stale"),
        (NodeRole("bm2").saw(Stamp(5, "bm3")), Stamp(5, "bm1"), Role.ACTIVE, "sender-stale"),
        (NodeRole("bm2"), Stamp(1, "bm1"), Role.PASSIVE, RefusalCode.SENDER_NOT_ACTIVE),
    ],
    ids=["receiver active", "lower epoch", "same epoch, lower node", "sender passive"],
)
def test_refusals(receiver: NodeRole, sender: Stamp, sender_role: Role, code: str) -> None:
    verdict = judge_sender(receiver, sender, sender_role)
    assert isinstance(verdict, Refused)
    assert verdict.code == code
    assert sender.node in verdict.reason


def refused_by(peer: NodeRole, me: NodeRole) -> Refusal:
    verdict = judge_sender(peer, me.stamp, me.role)
    assert isinstance(verdict, Refused)
    return Refusal(peer.node, peer.role, peer.highest_seen, verdict.code, verdict.reason)


def test_both_promoted_both_suspend_with_the_reason() -> None:
    bm1, bm2 = NodeRole("bm1").promote(), NodeRole("bm2").promote()  # a partition, two operators
    g1, g2 = Guard.starting(bm1, 0), Guard.starting(bm2, 0)
    assert g1.may_send and g2.may_send
    g1.observe(refused_by(bm2, bm1), 10)
    g2.observe(refused_by(bm1, bm2), 11)
    for guard, peer in ((g1, "bm2"), (g2, "bm1")):
        assert guard.state is GuardState.SUSPENDED and not guard.may_send
        assert f"split-brain suspected: {peer} claims active too" in (guard.reason or "")
        assert guard.clears and "demote" in guard.clears[0]
    assert (g1.since, g2.since) == (10, 11)


def test_the_old_active_learns_it_is_stale_and_stays_so_across_restarts() -> None:
    old = NodeRole("bm1").promote()  # epoch 1
    new = NodeRole("bm2").saw(old.stamp).promote()  # failover: epoch 2
    guard = Guard.starting(old, 0)
    transitions = guard.observe(refused_by(new, old), 5)
    assert transitions[0].new is GuardState.SUSPENDED
    assert "bm2 (active, has seen epoch 2 (bm2))" in transitions[0].evidence
    assert "stale" in (guard.reason or "")
    assert guard.role.is_stale()
    restarted = Guard.starting(guard.role, 6)  # what was persisted
    assert restarted.state is GuardState.SUSPENDED and "stale" in (restarted.reason or "")
    restarted.observe(ForcedResume("I know better"), 7)  # not past a superseded epoch
    assert not restarted.may_send
    restarted.observe(RoleChanged(restarted.role.demote()), 8)
    assert restarted.state is GuardState.SYNCING and not restarted.may_send  # passive now


def test_a_lost_peer_is_not_a_suspicion() -> None:
    guard = Guard.starting(NodeRole("bm1").promote(), 0)
    assert guard.observe(PeerLost("connection refused"), 1) == []
    assert guard.may_send


def test_two_promotions_to_one_epoch_leave_the_lower_id_stale_until_promoted_again() -> None:
    bm1, bm2 = NodeRole("bm1").promote(), NodeRole("bm2").promote()  # both epoch 1
    guard = Guard.starting(bm1, 0)
    bm2 = bm2.demote()  # the operator on bm2
    refusal = refused_by(bm2, bm1)  # (1, bm1) is below bm2's own (1, bm2)
    assert refusal.code is RefusalCode.SENDER_STALE
    guard.observe(refusal, 1)
    assert guard.suspicions.keys() == {Suspicion.STALE}
    assert "'bmsync promote' here (epoch 2" in guard.clears[0]
    bm1 = guard.role.promote()  # the advice, followed: a stale node promotes above
    assert bm1.stamp == Stamp(2, "bm1")
    verdict = judge_sender(bm2, bm1.stamp, Role.ACTIVE)
    assert isinstance(verdict, Accepted)
    guard.observe(RoleChanged(bm1), 2)
    guard.observe(PeerWelcomed("bm2", verdict.role.highest_seen), 3)
    assert guard.may_send


def test_a_node_active_and_not_superseded_is_not_promoted_again() -> None:
    with pytest.raises(AlreadyActive):
        NodeRole("bm1").saw(Stamp(1, "bm0")).promote().promote()
    stale = NodeRole("bm1").promote().saw(Stamp(1, "bm2"))  # same epoch, higher id
    assert stale.is_stale() and stale.promote().epoch == 2


def test_evidence_clears_a_peer_active_suspicion() -> None:
    bm2 = NodeRole("bm2").promote()  # epoch 1
    bm1 = NodeRole("bm1").saw(bm2.stamp).promote()  # epoch 2
    guard = Guard.starting(bm1, 0)
    guard.observe(refused_by(bm2, bm1), 1)  # bm2 still claims active
    assert guard.suspicions.keys() == {Suspicion.PEER_ACTIVE}
    bm2 = bm2.demote()
    verdict = judge_sender(bm2, bm1.stamp, Role.ACTIVE)
    assert isinstance(verdict, Accepted)
    transitions = guard.observe(PeerWelcomed("bm2", verdict.role.highest_seen), 2)
    assert [t.new for t in transitions] == [GuardState.SYNCING]
    assert "bm2 confirmed passive" in transitions[0].evidence


def test_fencing_clears_and_forcing_is_recorded() -> None:
    bm1 = NodeRole("bm1").saw(Stamp(1, "bm2")).promote()
    guard = Guard.starting(bm1, 0)
    guard.observe(refused_by(NodeRole("bm2").promote(), bm1), 1)
    guard.observe(PeerFenced("bm2"), 2)
    assert guard.may_send
    guard.observe(refused_by(NodeRole("bm2").promote(), bm1), 3)
    guard.observe(ForcedResume("bm2 is powered off, checked by hand"), 4)
    assert guard.may_send and guard.forced_reason == "bm2 is powered off, checked by hand"


def test_vip_answered_from_another_mac_suspends_until_clean_and_confirmed() -> None:
    bm1 = NodeRole("bm1").promote()
    guard = Guard.starting(bm1, 0, vip_configured=True)
    guard.observe(VipSeen(held=True, other_macs=("02:00:00:00:00:02",)), 1)
    assert "VIP also answers from 02:00:00:00:00:02" in (guard.reason or "")
    guard.observe(PeerWelcomed("bm2", bm1.stamp), 2)  # still answered elsewhere: no
    assert guard.state is GuardState.SUSPENDED
    guard.observe(VipSeen(held=True), 3)  # clean, but no confirmation yet
    assert guard.state is GuardState.SUSPENDED
    guard.observe(PeerWelcomed("bm2", bm1.stamp), 4)
    assert guard.may_send


def test_an_active_node_without_its_vip_suspends() -> None:
    guard = Guard.starting(NodeRole("bm1").promote(), 0, vip_configured=True)
    guard.observe(VipSeen(held=False), 1)
    assert guard.suspicions.keys() == {Suspicion.VIP_MISSING}


def test_vip_observations_without_a_vip_are_ignored() -> None:
    guard = Guard.starting(NodeRole("bm1").promote(), 0)
    assert guard.may_send
    assert guard.observe(VipSeen(held=False, other_macs=("x",)), 1) == []
    assert guard.observe(VipCheckFailed("arping is missing"), 2) == []
    assert guard.may_send


def test_with_a_vip_nothing_is_sent_before_the_first_check() -> None:
    guard = Guard.starting(NodeRole("bm1").promote(), 0, vip_configured=True)
    assert not guard.may_send
    assert guard.suspicions.keys() == {Suspicion.VIP_UNCHECKED}
    assert "not been checked yet" in (guard.reason or "")
    transitions = guard.observe(VipSeen(held=True), 1)  # a clean check: no handshake needed
    assert [t.new for t in transitions] == [GuardState.SYNCING] and guard.may_send


FAILED = "ha.vip.interface eth9: 'ip addr show' failed (exit status 1: Device \"eth9\" ...)"


def test_a_vip_check_that_cannot_run_suspends_until_a_check_works() -> None:
    bm1 = NodeRole("bm1").promote()
    guard = Guard.starting(bm1, 0, vip_configured=True)
    guard.observe(VipSeen(held=True), 1)
    transitions = guard.observe(VipCheckFailed(FAILED), 2)
    assert [t.new for t in transitions] == [GuardState.SUSPENDED] and not guard.may_send
    assert "split-brain cannot be ruled out: ha.vip.interface eth9" in (guard.reason or "")
    assert guard.since == 2
    (advice,) = guard.clears
    assert "the VIP check working again" in advice
    guard.observe(PeerWelcomed("bm2", bm1.stamp), 3)  # the peer is no evidence about the VIP
    guard.observe(VipCheckFailed(FAILED), 4)  # failing again: same suspicion, same since
    assert not guard.may_send and guard.since == 2
    guard.observe(VipSeen(held=True), 5)
    assert guard.may_send


def test_a_failed_check_does_not_let_the_peer_clear_a_disputed_vip() -> None:
    bm1 = NodeRole("bm1").promote()
    guard = Guard.starting(bm1, 0, vip_configured=True)
    guard.observe(VipSeen(held=True, other_macs=("02:00:00:00:00:02",)), 1)
    guard.observe(VipCheckFailed("arping -D could not check"), 2)
    guard.observe(PeerWelcomed("bm2", bm1.stamp), 3)  # the VIP is unknown: not clean
    assert guard.suspicions.keys() == {Suspicion.VIP_ELSEWHERE, Suspicion.VIP_UNCHECKED}
    guard.observe(VipSeen(held=True), 4)  # clean and checked, but not yet confirmed
    assert guard.suspicions.keys() == {Suspicion.VIP_ELSEWHERE}
    guard.observe(PeerWelcomed("bm2", bm1.stamp), 5)
    assert guard.may_send


def test_forcing_past_a_failing_vip_check_lasts_until_the_next_check() -> None:
    guard = Guard.starting(NodeRole("bm1").promote(), 0, vip_configured=True)
    guard.observe(VipCheckFailed(FAILED), 1)
    guard.observe(ForcedResume("checked the VIP by hand"), 2)
    assert guard.may_send
    guard.observe(VipCheckFailed(FAILED), 3)
    assert not guard.may_send and "ha.vip.interface eth9" in (guard.reason or "")


def test_maintenance_stops_sending_and_accepting() -> None:
    guard = Guard.starting(NodeRole("bm1").promote(), 0)
    guard.observe(MaintenanceSet(True), 1)
    assert guard.state is GuardState.MAINTENANCE and not guard.may_send
    assert "maintenance" in (guard.reason or "")
    guard.observe(MaintenanceSet(False), 2)
    assert guard.may_send


# -- epochs past the maximum (a hostile sender's) ----------------------------


def test_promotion_reaches_the_highest_epoch_and_refuses_to_pass_it() -> None:
    role = NodeRole("bm1").saw(Stamp(MAX_EPOCH - 1, "bm2")).promote()
    assert role.stamp == Stamp(MAX_EPOCH, "bm1")
    with pytest.raises(EpochExhausted) as raised:
        NodeRole("bm1").saw(Stamp(MAX_EPOCH, "evil")).promote()
    message = str(raised.value)
    assert f"epoch {MAX_EPOCH} (evil)" in message and "cannot be promoted" in message
    assert "Replace the key" in message and "bmsync reset-epoch --to EPOCH" in message
    assert EpochExhausted.exit_code == 8


def test_reset_epoch_lowers_what_a_passive_node_has_seen() -> None:
    hit = NodeRole("bm2", Role.PASSIVE, 3).saw(Stamp(MAX_EPOCH, "evil"))
    reset = hit.reset_seen(5)
    assert (reset.role, reset.epoch, reset.highest_seen) == (Role.PASSIVE, 3, Stamp(5, ""))
    # the real active, promoted at 5 or above, is accepted again
    assert isinstance(judge_sender(reset, Stamp(5, "bm1"), Role.ACTIVE), Accepted)
    # below its own epoch: both go down (a passive node's epoch only says
    # when it was last promoted)
    assert hit.reset_seen(1).stamp == Stamp(1, "bm2")
    assert hit.reset_seen(MAX_EPOCH) is hit  # nothing above the maximum: unchanged
    assert reset.reset_seen(7) is reset


def test_reset_epoch_refuses_an_active_node_and_epochs_out_of_range() -> None:
    active = NodeRole("bm1").promote()
    with pytest.raises(RoleStateError, match=r"only runs on a passive node.*bmsync demote"):
        active.reset_seen(0)
    for epoch in (-1, MAX_EPOCH + 1):
        with pytest.raises(RoleStateError, match="out of range"):
            active.demote().reset_seen(epoch)
