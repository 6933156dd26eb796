"""run_plan (bmsync.ha.operation) with steps run by a script: every step
in order and recorded; a failing step undoes it and those done before it,
in reverse, and the error says which step failed, what was undone, what
was not, and where each node stands."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from bmsync.core.errors import HaRefused
from bmsync.core.ha_frames import HaAction, HaAnswer, NodeFacts
from bmsync.core.roles import Role
from bmsync.ha.operation import RECORD_NAME, Record, last_operation, run_plan
from bmsync.ha.plans import WHAT, Plan, Step, switchover_plan

PLAN = switchover_plan(
    NodeFacts("bm1", Role.ACTIVE, 4, False, "syncing", False, False),
    NodeFacts("bm2", Role.PASSIVE, 4, False, "standby", False, False),
)
TOTAL = len(PLAN.steps)
STARTED = 1_790_000_000.0


Logged = list[MutableMapping[str, Any]]


@pytest.fixture(autouse=True)
def logs() -> Iterator[Logged]:
    """The events logged (and nothing written wherever an earlier test left
    structlog pointing: a CLI test's captured, since closed, stderr, and
    its level)."""
    structlog.reset_defaults()
    with capture_logs() as captured:
        yield captured


def node_facts(node: str, role: Role, epoch: int, daemon: str, **more: Any) -> NodeFacts:
    return NodeFacts(node, role, epoch, False, daemon, False, False, **more)


class Script:
    """Runs the steps it is given, answering ok unless told otherwise;
    every step it ran, in order."""

    def __init__(
        self,
        fail: dict[tuple[str, HaAction, bool], str] | None = None,
        facts: Callable[[Step], NodeFacts | None] | None = None,
    ) -> None:
        # (node, action, undo?) -> the error that step answers
        self.fail = fail or {}
        self.facts = facts or (lambda _: None)
        self.ran: list[tuple[str, HaAction]] = []
        self._failed_once = False

    async def execute(self, step: Step) -> HaAnswer:
        await asyncio.sleep(0)  # a real await, as the link's would be
        undo = self._failed_once
        self.ran.append((step.node, step.action))
        error = self.fail.get((step.node, step.action, undo))
        if error is not None and not undo:
            self._failed_once = True
        if error is not None:
            return HaAnswer(False, error=error, exit_code=10, facts=self.facts(step))
        return HaAnswer(True, lines=[f"{step.action} done on {step.node}"], facts=self.facts(step))


def run(plan: Plan, script: Script, state: Path) -> tuple[list[str], Record]:
    said: list[str] = []
    record = Record(state, plan, lambda: STARTED)
    asyncio.run(run_plan(plan, script.execute, said.append, record))
    return said, record


def fail_run(plan: Plan, script: Script, state: Path) -> tuple[str, list[str]]:
    said: list[str] = []
    record = Record(state, plan, lambda: STARTED)
    with pytest.raises(HaRefused) as caught:
        asyncio.run(run_plan(plan, script.execute, said.append, record))
    return str(caught.value), said


def recorded(state: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((state / RECORD_NAME).read_text())
    return doc


def test_every_step_runs_in_order_and_is_recorded(tmp_path: Path, logs: Logged) -> None:
    script = Script()
    said, _ = run(PLAN, script, tmp_path)
    assert [(e["event"], e["node"], e["action"]) for e in logs] == [
        (event, s.node, str(s.action))
        for s in PLAN.steps
        for event in ("operation_step", "operation_step_done")
    ]
    assert all(e["operation"] == "switchover bm1 -> bm2" for e in logs)
    assert all(e["ok"] and "seconds" in e for e in logs if e["event"].endswith("_done"))
    assert script.ran == [(s.node, s.action) for s in PLAN.steps]
    assert said[0] == f"[1/{TOTAL}] {PLAN.steps[0].describe()}"
    assert f"[{TOTAL}/{TOTAL}] {PLAN.steps[-1].describe()}" in said
    assert "      drain done on bm1" in said
    doc = recorded(tmp_path)
    assert doc["operation"] == "switchover bm1 -> bm2"
    assert doc["result"] == "done"
    assert doc["started"] == doc["ended"] == "2026-09-21T14:13:20Z"
    assert [(s["node"], s["action"], s["undo"], s["ok"]) for s in doc["steps"]] == [
        (s.node, str(s.action), False, True) for s in PLAN.steps
    ]
    assert doc["steps"][0]["said"] == ["drain done on bm1"]
    assert doc["steps"][0]["error"] is None
    assert last_operation(tmp_path) == doc


def test_the_record_says_running_while_the_operation_runs(tmp_path: Path) -> None:
    seen: list[str] = []

    async def execute(step: Step) -> HaAnswer:
        seen.append(recorded(tmp_path)["result"])
        return HaAnswer(True)

    record = Record(tmp_path, PLAN, lambda: STARTED)
    asyncio.run(run_plan(PLAN, execute, lambda _: None, record))
    assert seen == ["running"] * TOTAL
    assert recorded(tmp_path)["ended"] is not None


def expected_undos(failed_at: int) -> list[tuple[str, HaAction]]:
    """The undos of steps failed_at..1, in reverse, those that have one."""
    return [
        (step.node, step.undo) for step in reversed(PLAN.steps[:failed_at]) if step.undo is not None
    ]


@pytest.mark.parametrize("failed_at", range(1, TOTAL + 1))
def test_a_failing_step_undoes_it_and_those_before_in_reverse(
    tmp_path: Path, failed_at: int
) -> None:
    failing = PLAN.steps[failed_at - 1]
    script = Script({(failing.node, failing.action, False): "exit status 1"})
    message, said = fail_run(PLAN, script, tmp_path)

    forward = [(s.node, s.action) for s in PLAN.steps[:failed_at]]
    assert script.ran[:failed_at] == forward
    undos = expected_undos(failed_at)
    assert script.ran[failed_at:] == undos

    assert f"switchover bm1 -> bm2 failed at step {failed_at}/{TOTAL}" in message
    assert f"({failing.describe()}): exit status 1" in message
    if undos:
        listed = "; ".join(f"{node}: {WHAT[action]}" for node, action in undos)
        assert f"Undone, in reverse: {listed}." in message
    else:
        assert "Nothing to undo" in message
    assert "NOT undone" not in message
    assert "      FAILED: exit status 1" in said
    assert [line for line in said if line.startswith("[undo]")] == [
        f"[undo] {node}: {WHAT[action]}" for node, action in undos
    ]

    doc = recorded(tmp_path)
    assert doc["result"] == f"failed at step {failed_at}"
    steps = doc["steps"]
    assert [(s["node"], s["action"], s["undo"]) for s in steps] == [
        *((n, str(a), False) for n, a in forward),
        *((n, str(a), True) for n, a in undos),
    ]
    assert steps[failed_at - 1]["ok"] is False
    assert steps[failed_at - 1]["error"] == "exit status 1"
    assert all(s["ok"] for i, s in enumerate(steps) if i != failed_at - 1)


def test_failing_at_the_promotion_undoes_everything_in_reverse(tmp_path: Path) -> None:
    script = Script({("bm2", HaAction.PROMOTE, False): "the epoch moved"})
    message, _ = fail_run(PLAN, script, tmp_path)
    assert script.ran[TOTAL - 1 :] == [
        ("bm2", HaAction.DEMOTE),
        ("bm2", HaAction.SERVICES_STOP),
        ("bm2", HaAction.VIP_DOWN),
        ("bm2", HaAction.STORAGE_UNMOUNT),
        ("bm1", HaAction.PROMOTE),
        ("bm1", HaAction.STORAGE_MOUNT),
        ("bm1", HaAction.VIP_UP),
        ("bm1", HaAction.SERVICES_START),
        ("bm1", HaAction.RESUME),
    ]
    assert "failed at step 9/10" in message


def test_now_says_where_each_node_stands_from_their_last_answers(tmp_path: Path) -> None:
    bm1 = [node_facts("bm1", Role.ACTIVE, 4, "syncing")]

    def facts(step: Step) -> NodeFacts | None:
        # bm1 answers every step with its facts as they are then; bm2 only
        # its first step
        if step.node == "bm1":
            if step.action is HaAction.DEMOTE:
                bm1.append(node_facts("bm1", Role.PASSIVE, 4, "standby"))
            elif step.action is HaAction.PROMOTE:  # the undo of its demotion
                bm1.append(node_facts("bm1", Role.ACTIVE, 6, "syncing", vip_held=True))
            return bm1[-1]
        if step.action is HaAction.STORAGE_MOUNT:
            return node_facts("bm2", Role.PASSIVE, 4, "standby", mounted=["/srv/mail"])
        return None

    script = Script({("bm2", HaAction.VIP_UP, False): "10.0.0.9 answers ARP"}, facts)
    message, _ = fail_run(PLAN, script, tmp_path)
    now = message.split("Now: ", 1)[1]
    assert now == (
        "bm1 active at epoch 6, daemon syncing, VIP held; "
        "bm2 passive at epoch 4, daemon standby, mounted: /srv/mail"
    )


def test_now_is_unknown_when_no_answer_carried_facts(tmp_path: Path) -> None:
    script = Script({("bm1", HaAction.DRAIN, False): "the peer's tree differs"})
    message, _ = fail_run(PLAN, script, tmp_path)
    assert "Now: unknown ('bmsync ha status' on each node)" in message


def test_an_undo_that_fails_is_left_to_do_by_hand_and_the_rest_still_run(
    tmp_path: Path, logs: Logged
) -> None:
    script = Script(
        {
            ("bm2", HaAction.SERVICES_START, False): "bm-core did not start",
            ("bm2", HaAction.VIP_DOWN, True): "ip: RTNETLINK answers: Operation not permitted",
        }
    )
    message, said = fail_run(PLAN, script, tmp_path)
    undos = expected_undos(8)
    undo_logged = [
        (e["node"], e["action"], e["ok"]) for e in logs if e["event"] == "operation_undo_done"
    ]
    assert undo_logged == [(n, str(a), a is not HaAction.VIP_DOWN) for n, a in undos]
    assert script.ran[8:] == undos  # every undo tried, the failed one too
    assert "failed at step 8/10" in message
    failed = f"bm2: {WHAT[HaAction.VIP_DOWN]} (ip: RTNETLINK answers: Operation not permitted)"
    assert f"NOT undone (do it by hand): {failed}" in message
    undone = "; ".join(
        f"{node}: {WHAT[action]}" for node, action in undos if action is not HaAction.VIP_DOWN
    )
    assert f"Undone, in reverse: {undone}." in message
    assert "      FAILED: ip: RTNETLINK answers: Operation not permitted" in said

    doc = recorded(tmp_path)
    assert doc["result"] == "failed at step 8"
    vip_down = [s for s in doc["steps"] if s["undo"] and s["action"] == "vip-down"]
    assert len(vip_down) == 1 and vip_down[0]["ok"] is False
    assert vip_down[0]["error"] == "ip: RTNETLINK answers: Operation not permitted"


def test_when_every_undo_fails_nothing_is_said_undone(tmp_path: Path) -> None:
    script = Script(
        {
            ("bm1", HaAction.SERVICES_STOP, False): "bmctl stop: exit status 1",
            ("bm1", HaAction.SERVICES_START, True): "bmctl start: exit status 1",
            ("bm1", HaAction.RESUME, True): "no daemon answers",
        }
    )
    message, _ = fail_run(PLAN, script, tmp_path)
    assert "failed at step 2/10" in message
    assert "Nothing to undo. NOT undone (do it by hand): " in message
    assert "bmctl start: exit status 1" in message and "no daemon answers" in message


def test_a_plan_of_steps_without_undos_says_nothing_to_undo(tmp_path: Path) -> None:
    plan = Plan("check", (Step("bm1", HaAction.STATUS), Step("bm2", HaAction.STATUS)))
    script = Script({("bm2", HaAction.STATUS, False): "no answer"})
    message, _ = fail_run(plan, script, tmp_path)
    assert script.ran == [("bm1", HaAction.STATUS), ("bm2", HaAction.STATUS)]
    assert "check failed at step 2/2" in message and "Nothing to undo" in message
    assert recorded(tmp_path)["result"] == "failed at step 2"
