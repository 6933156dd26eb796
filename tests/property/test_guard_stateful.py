"""Two nodes with persisted roles and epochs, driven through promotions,
demotions, crashes and restarts, partitions and heals, forced resumes and
fencing, VIP checks that work or cannot run, running the real handshake
rule (``judge_sender``) and the real guard. The invariants: a write is
accepted only from the highest-epoch active node, and never while the
receiver is itself active; with a VIP configured, a node sends only while
its last VIP check worked (or an operator forced it since)."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from bmsync.core.guard import Guard
from bmsync.core.observations import ForcedResume, PeerFenced, PeerWelcomed, VipCheckFailed, VipSeen
from bmsync.core.roles import Accepted, AlreadyActive, NodeRole, Refusal, Role, Stamp, judge_sender

NODES = ("bm1", "bm2")
nodes = st.sampled_from(NODES)


def other(node: str) -> str:
    return NODES[1 - NODES.index(node)]


class TwoNodes(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.disk = {n: NodeRole(n) for n in NODES}  # what survives a crash
        self.guard: dict[str, Guard | None] = {n: Guard.starting(self.disk[n], 0.0) for n in NODES}
        self.linked = True
        self.promotions: dict[str, list[Stamp]] = {n: [] for n in NODES}
        self.accepted: dict[str, list[Stamp]] = {n: [] for n in NODES}
        self.writes = 0
        self.vip = False
        self.vip_unknown = {n: False for n in NODES}  # not checked, or the check failed

    @initialize(vip=st.booleans())
    def configure_vip(self, vip: bool) -> None:
        self.vip = vip
        for node in NODES:
            self.restart(node)

    def tick(self) -> float:
        self.now += 1.0
        return self.now

    # -- operators and the HA module --

    @rule(node=nodes)
    def promote(self, node: str) -> None:
        try:
            self.disk[node] = self.disk[node].promote()
        except AlreadyActive:
            return
        self.promotions[node].append(self.disk[node].stamp)
        self.restart(node)  # the daemon picks the new role up

    @rule(node=nodes)
    def demote(self, node: str) -> None:
        self.disk[node] = self.disk[node].demote()
        self.restart(node)

    @rule(node=nodes)
    def crash(self, node: str) -> None:
        self.guard[node] = None

    @rule(node=nodes)
    def restart(self, node: str) -> None:
        self.guard[node] = Guard.starting(self.disk[node], self.tick(), vip_configured=self.vip)
        self.vip_unknown[node] = self.vip

    @rule(node=nodes, works=st.booleans(), held=st.booleans())
    def vip_check(self, node: str, works: bool, held: bool) -> None:
        guard = self.guard[node]
        if guard is None:
            return
        seen = VipSeen(held=held) if works else VipCheckFailed("arping -D could not check")
        guard.observe(seen, self.tick())
        self.vip_unknown[node] = self.vip and not works

    @rule()
    def partition(self) -> None:
        self.linked = False

    @rule()
    def heal(self) -> None:
        self.linked = True

    @rule(node=nodes)
    def force_resume(self, node: str) -> None:
        guard = self.guard[node]
        if guard is not None:
            guard.observe(ForcedResume("operator says so"), self.tick())
            self.vip_unknown[node] = False

    @rule(node=nodes)
    def fence_the_peer(self, node: str) -> None:
        guard, peer = self.guard[node], other(node)
        if guard is not None and self.guard[peer] is not None:
            self.guard[peer] = None  # powered off
            guard.observe(PeerFenced(peer), self.tick())

    # -- a sync session --

    @precondition(lambda self: self.linked)
    @rule(sender=nodes)
    def session(self, sender: str) -> None:
        receiver = other(sender)
        guard = self.guard[sender]
        if guard is None or self.guard[receiver] is None:
            return  # a daemon or an agent that is not running
        if self.disk[sender].role is not Role.ACTIVE:
            return  # `bmsync run` refuses to send from a passive node
        hello = self.disk[sender].stamp
        verdict = judge_sender(self.disk[receiver], hello, Role.ACTIVE)
        if isinstance(verdict, Accepted):
            self.disk[receiver] = verdict.role  # persisted before the Welcome
            guard.observe(PeerWelcomed(receiver, verdict.role.highest_seen), self.tick())
            self.disk[sender] = self.disk[sender].saw(guard.role.highest_seen)
            if guard.may_send:
                self.write(sender, receiver, hello)
        else:
            peer = self.disk[receiver]
            guard.observe(
                Refusal(receiver, peer.role, peer.highest_seen, verdict.code, verdict.reason),
                self.tick(),
            )
            self.disk[sender] = self.disk[sender].saw(guard.role.highest_seen)

    def write(self, sender: str, receiver: str, stamp: Stamp) -> None:
        me = self.disk[receiver]
        assert me.role is Role.PASSIVE, "a write accepted by an active node"
        assert stamp >= me.highest_seen, "a write from below the highest stamp seen"
        for mine in self.promotions[receiver]:
            assert stamp > mine, f"{sender} at {stamp} wrote over {receiver}'s promotion {mine}"
        for before in self.accepted[receiver]:
            assert stamp >= before, f"{stamp} accepted after the higher {before}"
        self.accepted[receiver].append(stamp)
        self.writes += 1

    # -- always --

    @invariant()
    def epochs_never_repeat_on_one_node(self) -> None:
        for node in NODES:
            epochs = [s.epoch for s in self.promotions[node]]
            assert epochs == sorted(set(epochs))

    @invariant()
    def a_guard_sends_only_for_an_active_node(self) -> None:
        for node in NODES:
            guard = self.guard[node]
            if guard is not None and guard.may_send:
                assert guard.role.role is Role.ACTIVE
                assert not guard.role.is_stale()

    @invariant()
    def no_send_without_a_working_vip_check(self) -> None:
        for node in NODES:
            guard = self.guard[node]
            if guard is not None and self.vip_unknown[node]:
                assert not guard.may_send, f"{node} sends with its VIP unchecked"


TwoNodes.TestCase.settings = settings(max_examples=400, stateful_step_count=40, deadline=None)
test_two_nodes = TwoNodes.TestCase
