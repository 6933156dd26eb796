"""Running an HA operation's plan (``bmsync.ha.plans``): each step on its
node, this one in a worker thread, the peer's through its agent over the
sync's SSH link (a session of purpose ``ha``, which holds the peer's
operation lock while this node holds its own). Every step is logged
(start, result, duration) and recorded in ``state_dir/last-operation.json``;
when one fails, the steps done are undone in reverse, and the error says
which step failed, what was undone, and where each node stands now.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog

from bmsync.config.model import Config
from bmsync.core.errors import HaRefused
from bmsync.core.frames import Purpose
from bmsync.core.ha_frames import HaAction, HaAnswer, NodeFacts
from bmsync.fs.atomic import write_atomic
from bmsync.ha.actions import node_facts, perform
from bmsync.ha.peer_link import peer_session, peer_welcome
from bmsync.ha.plans import WHAT, Plan, Step
from bmsync.link.session import PeerSession
from bmsync.state.operation import OperationLock

log = structlog.get_logger("bmsync.ha")

RECORD_NAME = "last-operation.json"
Say = Callable[[str], None]
Execute = Callable[[Step], Awaitable[HaAnswer]]


class Record:
    """``state_dir/last-operation.json``: the last operation, step by step,
    rewritten (atomically) after each, for ``bmsync ha status``."""

    def __init__(self, state_dir: Path, plan: Plan, wall: Callable[[], float]) -> None:
        self.path = state_dir / RECORD_NAME
        self._wall = wall
        self.doc: dict[str, Any] = {
            "operation": plan.name,
            "started": _iso(wall()),
            "ended": None,
            "result": "running",
            "steps": [],
        }
        self._save()

    def step(self, step: Step, answer: HaAnswer, seconds: float, undo: bool = False) -> None:
        self.doc["steps"].append(
            {
                "node": step.node,
                "action": str(step.action),
                "undo": undo,
                "ok": answer.ok,
                "seconds": round(seconds, 2),
                "said": answer.lines,
                "error": answer.error or None,
            }
        )
        self._save()

    def end(self, result: str) -> None:
        self.doc["ended"], self.doc["result"] = _iso(self._wall()), result
        self._save()

    def _save(self) -> None:
        write_atomic(self.path, msgspec.json.encode(self.doc) + b"\n")


def last_operation(state_dir: Path) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = msgspec.json.decode((state_dir / RECORD_NAME).read_bytes())
    except (FileNotFoundError, msgspec.DecodeError):
        return None
    return found


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


async def run_plan(plan: Plan, execute: Execute, say: Say, record: Record) -> None:
    """Every step in order; on a failure, the steps done (and the one that
    failed) undone in reverse, then HaRefused saying which step failed and
    what was undone."""
    done: list[Step] = []
    facts: dict[str, NodeFacts] = {}
    total = len(plan.steps)
    for number, step in enumerate(plan.steps, 1):
        say(f"[{number}/{total}] {step.describe()}")
        answer, seconds = await _timed(execute, step, plan.name, "operation_step")
        record.step(step, answer, seconds)
        for line in answer.lines:
            say(f"      {line}")
        if answer.facts is not None:
            facts[step.node] = answer.facts
        if answer.ok:
            done.append(step)
            continue
        say(f"      FAILED: {answer.error}")
        # the failed step too: it may have done part of its work, and every
        # undo is harmless where there is nothing to undo
        undone = await _roll_back([*done, step], execute, say, record, facts, plan.name)
        record.end(f"failed at step {number}")
        raise HaRefused(
            f"{plan.name} failed at step {number}/{total} ({step.describe()}): {answer.error}. "
            f"{undone}. Now: {_where(facts)}"
        )
    record.end("done")


async def _timed(
    execute: Execute, step: Step, operation: str, event: str
) -> tuple[HaAnswer, float]:
    started = time.monotonic()
    log.info(event, operation=operation, node=step.node, action=str(step.action))
    answer = await execute(step)
    seconds = time.monotonic() - started
    log.info(
        f"{event}_done",
        operation=operation,
        node=step.node,
        action=str(step.action),
        ok=answer.ok,
        seconds=round(seconds, 2),
        error=answer.error or None,
    )
    return answer, seconds


async def _roll_back(
    done: list[Step],
    execute: Execute,
    say: Say,
    record: Record,
    facts: dict[str, NodeFacts],
    operation: str,
) -> str:
    if not done:
        return "Nothing had been done"
    undone, failed = [], []
    for step in reversed(done):
        if step.undo is None:
            continue
        undo = Step(step.node, step.undo)
        say(f"[undo] {undo.describe()}")
        answer, seconds = await _timed(execute, undo, operation, "operation_undo")
        record.step(undo, answer, seconds, undo=True)
        if answer.facts is not None:
            facts[undo.node] = answer.facts
        if answer.ok:
            undone.append(f"{undo.node}: {WHAT[undo.action]}")
        else:
            say(f"      FAILED: {answer.error}")
            failed.append(f"{undo.node}: {WHAT[undo.action]} ({answer.error})")
    said = f"Undone, in reverse: {'; '.join(undone)}" if undone else "Nothing to undo"
    if failed:
        said += f". NOT undone (do it by hand): {'; '.join(failed)}"
    return said


def _where(facts: dict[str, NodeFacts]) -> str:
    if not facts:
        return "unknown ('bmsync ha status' on each node)"
    return "; ".join(
        f"{f.node} {f.role} at epoch {f.epoch}, daemon {f.daemon}"
        + (", VIP held" if f.vip_held else "")
        + (f", mounted: {', '.join(f.mounted)}" if f.mounted else "")
        for f in facts.values()
    )


class Operation:
    """An operation between this node and its peer: both locks held, a
    session of purpose ``ha`` open to the peer's agent."""

    def __init__(self, conf: Config) -> None:
        self.conf = conf
        self._lock = OperationLock(conf.state_dir)
        self._stack = contextlib.AsyncExitStack()
        self.session: PeerSession | None = None

    async def __aenter__(self) -> Operation:
        self._lock.acquire("an HA operation run here")
        try:
            self.session = await self._stack.enter_async_context(
                peer_session(self.conf, Purpose.HA)
            )
        except BaseException:
            self._lock.release()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        try:
            await self._stack.aclose()
        finally:
            self._lock.release()

    async def facts(self, operation: str) -> tuple[NodeFacts, NodeFacts]:
        """(this node's, the peer's)."""
        assert self.session is not None
        here = await asyncio.to_thread(node_facts, self.conf)
        answer = await self.session.ha_step(HaAction.STATUS, operation)
        if not answer.ok or answer.facts is None:
            raise HaRefused(f"the peer could not report its state: {answer.error}")
        return here, answer.facts

    async def execute(self, step: Step, operation: str) -> HaAnswer:
        if step.node == self.conf.node:
            return await asyncio.to_thread(perform, self.conf, step.action, operation)
        assert self.session is not None
        return await self.session.ha_step(step.action, operation)


async def peer_answers(conf: Config) -> str | None:
    """The peer's node id if its agent answers a read-only handshake within
    the connect timeout; None if it cannot be reached."""
    welcome = await peer_welcome(conf)
    if isinstance(welcome, str):
        log.info("peer_unreachable", error=welcome)
        return None
    return welcome.node
