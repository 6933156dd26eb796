"""``bmsync ha switchover`` and ``bmsync ha takeover``: the HA operations,
each a plan of steps (``bmsync.ha.plans``) run by ``bmsync.ha.operation``."""

from __future__ import annotations

import argparse
import asyncio
import time

import structlog

from bmsync.cli.ha import say_now
from bmsync.config.model import Config
from bmsync.core.errors import HaRefused, UsageError
from bmsync.core.ha_frames import HaAnswer
from bmsync.ha.actions import node_facts, perform
from bmsync.ha.operation import Operation, Record, peer_answers, run_plan
from bmsync.ha.plans import Step, switchover_plan, takeover_plan
from bmsync.state.operation import OperationLock

log = structlog.get_logger("bmsync.ha")


def switchover(conf: Config, args: argparse.Namespace) -> int:
    """Move the active role, the storage, the VIP and the services from the
    active node to the passive one, both up (run on either)."""
    return asyncio.run(_switchover(conf, args.dry_run))


async def _switchover(conf: Config, dry_run: bool) -> int:
    async with Operation(conf) as operation:
        here, peer = await operation.facts("switchover")
        plan = switchover_plan(here, peer)
        if dry_run:
            for line in plan.lines():
                print(line)
            return 0
        record = Record(conf.state_dir, plan, time.time)

        async def execute(step: Step) -> HaAnswer:
            return await operation.execute(step, plan.name)

        await run_plan(plan, execute, say_now, record)
    new = plan.steps[-2].node
    print(f"{plan.name}: done; {new} is the active node, syncing to {plan.steps[0].node}")
    return 0


def takeover(conf: Config, args: argparse.Namespace) -> int:
    """The peer is lost: fence it, then take the storage, the VIP, the
    services and the active role here (run on the passive node)."""
    if args.peer_is_powered_off and not args.reason.strip():
        raise UsageError(
            'bmsync ha takeover --peer-is-powered-off needs --reason "...": say how you know '
            "the peer is off (it is logged and kept in role.json)"
        )
    return asyncio.run(_takeover(conf, args))


async def _takeover(conf: Config, args: argparse.Namespace) -> int:
    peer = conf.require_peer()
    fencing = conf.ha.fencing is not None
    if not fencing and not args.peer_is_powered_off:
        raise HaRefused(
            f"{conf.source} has no ha.fencing: without fencing nothing proves {peer.host} is "
            "off, and two nodes writing one storage corrupt it (no changeover without "
            "STONITH). Configure ha.fencing (README, 'Fencing the peer'); or, once you have "
            f"checked yourself that {peer.host} is powered off: bmsync ha takeover "
            '--peer-is-powered-off --reason "..."'
        )
    answered = await peer_answers(conf)
    if answered is not None:
        if not args.force or not fencing:
            raise HaRefused(
                f"the peer {answered} answers: it is not lost. 'bmsync ha switchover' hands "
                "over with both nodes up"
                + ("; 'bmsync ha takeover --force' fences it anyway" if fencing else "")
            )
        log.warning("takeover_forced", peer=answered)
    operation = f"takeover from {peer.host} by {conf.node}"
    if args.peer_is_powered_off:
        operation += f"; the operator says {peer.host} is powered off: {args.reason}"
        log.warning("peer_declared_powered_off", peer=peer.host, reason=args.reason)
    lock = OperationLock(conf.state_dir)
    lock.acquire("a takeover run here")
    try:
        here = await asyncio.to_thread(node_facts, conf)
        plan = takeover_plan(here, peer.host, fencing)
        if args.dry_run:
            for line in plan.lines():
                print(line)
            return 0
        record = Record(conf.state_dir, plan, time.time)

        async def execute(step: Step) -> HaAnswer:
            return await asyncio.to_thread(perform, conf, step.action, operation)

        await run_plan(plan, execute, say_now, record)
    finally:
        lock.release()
    print(f"{plan.name}: done; {conf.node} is the active node")
    return 0
