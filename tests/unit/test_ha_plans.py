"""The switchover plan (bmsync.ha.plans), from both nodes' facts: its ten
steps and their nodes whichever node runs it, the refusals an
administrator gets and what they tell them to do, and each step's undo."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bmsync.core.errors import HaRefused
from bmsync.core.ha_frames import HaAction, NodeFacts
from bmsync.core.roles import Role
from bmsync.ha.plans import UNDO, WHAT, Plan, Step, switchover_plan, takeover_plan


def facts(
    node: str,
    role: Role,
    *,
    daemon: str = "syncing",
    stale: bool = False,
    maintenance: bool = False,
) -> NodeFacts:
    return NodeFacts(node, role, 4, stale, daemon, False, maintenance)


ACTIVE = facts("bm1", Role.ACTIVE)
PASSIVE = facts("bm2", Role.PASSIVE, daemon="standby")

EXPECTED = [
    ("bm1", HaAction.DRAIN),
    ("bm1", HaAction.SERVICES_STOP),
    ("bm1", HaAction.VIP_DOWN),
    ("bm1", HaAction.STORAGE_UNMOUNT),
    ("bm1", HaAction.DEMOTE),
    ("bm2", HaAction.STORAGE_MOUNT),
    ("bm2", HaAction.VIP_UP),
    ("bm2", HaAction.SERVICES_START),
    ("bm2", HaAction.PROMOTE),
    ("bm1", HaAction.RESUME),
]


def test_the_ten_steps_in_order_each_on_its_node() -> None:
    plan = switchover_plan(ACTIVE, PASSIVE)
    assert plan.name == "switchover bm1 -> bm2"
    assert [(step.node, step.action) for step in plan.steps] == EXPECTED


def test_the_plan_is_the_same_whichever_node_runs_it() -> None:
    assert switchover_plan(PASSIVE, ACTIVE) == switchover_plan(ACTIVE, PASSIVE)


@pytest.mark.parametrize("daemon", ["syncing", "degraded", "reconciling", "paused"])
def test_an_active_daemon_able_to_sync_is_enough(daemon: str) -> None:
    plan = switchover_plan(facts("bm1", Role.ACTIVE, daemon=daemon), PASSIVE)
    assert len(plan.steps) == 10


def refusal(here: NodeFacts, peer: NodeFacts) -> str:
    with pytest.raises(HaRefused) as caught:
        switchover_plan(here, peer)
    assert caught.value.exit_code == 10
    return str(caught.value)


def test_both_active_is_refused() -> None:
    said = refusal(ACTIVE, facts("bm2", Role.ACTIVE))
    assert "bm1 and bm2 are both active" in said
    assert "'bmsync status' on each says what to do first" in said


def test_both_passive_is_refused() -> None:
    said = refusal(facts("bm1", Role.PASSIVE), PASSIVE)
    assert "bm1 and bm2 are both passive" in said
    assert "'bmsync status' on each" in said


@pytest.mark.parametrize("which", ["here", "peer"])
def test_a_stale_node_is_refused(which: str) -> None:
    stale_passive = facts("bm2", Role.PASSIVE, stale=True)
    here, peer = (stale_passive, ACTIVE) if which == "here" else (ACTIVE, stale_passive)
    said = refusal(here, peer)
    assert "bm2 is stale" in said
    assert "settle the roles first" in said and "'bmsync status' on it" in said


@pytest.mark.parametrize("which", ["here", "peer"])
def test_a_node_in_maintenance_is_refused(which: str) -> None:
    resting = facts("bm1", Role.ACTIVE, maintenance=True)
    here, peer = (resting, PASSIVE) if which == "here" else (PASSIVE, resting)
    said = refusal(here, peer)
    assert "bm1 is in maintenance" in said
    assert "'bmsync maintenance off'" in said


def test_the_active_daemon_stopped_is_refused_with_how_to_start_it() -> None:
    said = refusal(PASSIVE, facts("bm1", Role.ACTIVE, daemon="stopped"))
    assert "the daemon on bm1 is stopped: the final sync cannot run" in said
    assert "'systemctl start bmsync' on bm1" in said and "then retry" in said


@pytest.mark.parametrize("daemon", ["suspended", "disconnected"])
def test_the_active_daemon_unable_to_sync_is_refused(daemon: str) -> None:
    said = refusal(facts("bm1", Role.ACTIVE, daemon=daemon), PASSIVE)
    assert f"the daemon on bm1 is {daemon}: the final sync cannot run" in said
    assert "'bmsync status' on bm1" in said and "then retry" in said


def test_the_passive_daemon_stopped_does_not_matter() -> None:
    plan = switchover_plan(ACTIVE, facts("bm2", Role.PASSIVE, daemon="stopped"))
    assert [(step.node, step.action) for step in plan.steps] == EXPECTED


def test_lines_show_each_step_and_its_undo() -> None:
    plan = switchover_plan(ACTIVE, PASSIVE)
    lines = plan.lines()
    assert lines[0].startswith("switchover bm1 -> bm2, 10 steps")
    assert "undone, in reverse" in lines[0]
    assert len(lines) == 11
    for number, (line, step) in enumerate(zip(lines[1:], plan.steps, strict=True), 1):
        assert line.strip().startswith(f"{number}. {step.node}: {WHAT[step.action]}")
        if step.undo is None:
            assert "[undo:" not in line
        else:
            assert line.endswith(f"[undo: {WHAT[step.undo]}]")
    assert "[undo: lift the pause of sync]" in lines[1]
    assert "[undo: promote at a new epoch" in lines[5]
    assert "[undo:" not in lines[10]  # the last step, resume, has none


def test_a_plan_without_undos_says_none() -> None:
    plan = Plan("check", (Step("bm1", HaAction.STATUS),))
    assert plan.lines() == [
        "check, 1 steps (each undone, in reverse, if a later fails):",
        f"   1. bm1: {WHAT[HaAction.STATUS]}",
    ]


def test_every_action_has_an_undo_entry_and_a_description() -> None:
    assert set(UNDO) == set(HaAction)
    assert set(WHAT) == set(HaAction)
    assert all(WHAT[action].strip() for action in HaAction)


@given(st.sampled_from(list(HaAction)))
def test_undo_of_undo_is_the_action_itself_for_reversible_pairs(action: HaAction) -> None:
    undo = UNDO[action]
    if undo is None:
        return
    back = UNDO[undo]
    if action is HaAction.DRAIN:
        # resume lifts the pause drain left; nothing undoes a resume
        assert undo is HaAction.RESUME and back is None
    elif action is HaAction.STORAGE_MOUNT_PEER_DOWN:
        # a takeover's mount is undone by the plain unmount, whose undo is
        # the mount that asks the peer first
        assert undo is HaAction.STORAGE_UNMOUNT and back is HaAction.STORAGE_MOUNT
    else:
        assert back is action


def test_the_one_way_undos() -> None:
    one_way = {a for a, u in UNDO.items() if u is not None and UNDO[u] is not a}
    assert one_way == {HaAction.DRAIN, HaAction.STORAGE_MOUNT_PEER_DOWN}
    assert UNDO[HaAction.FENCE_PEER] is None  # a fenced peer is not powered on again


def test_takeover_fences_first_then_takes_everything_here() -> None:
    plan = takeover_plan(PASSIVE, "10.0.0.1", fencing=True)
    assert plan.name == "takeover from 10.0.0.1 by bm2"
    assert [(s.node, s.action) for s in plan.steps] == [
        ("bm2", HaAction.FENCE_PEER),
        ("bm2", HaAction.STORAGE_MOUNT_PEER_DOWN),
        ("bm2", HaAction.VIP_UP),
        ("bm2", HaAction.SERVICES_START),
        ("bm2", HaAction.PROMOTE),
    ]
    assert "[undo" not in plan.lines()[1]  # a fence is not undone


def test_takeover_without_fencing_has_no_fence_step() -> None:
    plan = takeover_plan(PASSIVE, "10.0.0.1", fencing=False)
    assert HaAction.FENCE_PEER not in [s.action for s in plan.steps]
    assert len(plan.steps) == 4


def test_takeover_is_refused_on_the_active_node_and_in_maintenance() -> None:
    with pytest.raises(HaRefused, match="is the active node already"):
        takeover_plan(ACTIVE, "10.0.0.2", fencing=True)
    with pytest.raises(HaRefused, match="maintenance"):
        takeover_plan(facts("bm2", Role.PASSIVE, maintenance=True), "10.0.0.1", fencing=True)
    stale = facts("bm1", Role.ACTIVE, stale=True)
    assert takeover_plan(stale, "10.0.0.2", fencing=True).steps  # a stale active may take over
