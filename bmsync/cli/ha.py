"""``bmsync ha ...``: the HA primitives, each a command an administrator
can run by hand."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import time
from typing import Any

import structlog

from bmsync.config.model import Config, StorageConfig, VipConfig
from bmsync.core.errors import ConfigError, FencingError, HaRefused, UsageError
from bmsync.core.frames import HaAnswer
from bmsync.ha.actions import node_facts, perform, tell_daemon_fenced
from bmsync.ha.fence import fence as run_fence
from bmsync.ha.fencing import planned
from bmsync.ha.operation import Operation, Record, peer_answers, run_plan
from bmsync.ha.peer_mounts import ask_peer
from bmsync.ha.plans import Step, switchover_plan, takeover_plan
from bmsync.ha.services import commands_of, run_step, shell_argv
from bmsync.ha.status import collect
from bmsync.ha.storage import (
    StorageTools,
    mount_plan_lines,
    mount_storage,
    unmount_plan_lines,
    unmount_storage,
)
from bmsync.ha.vip import detect_argv, show_argv
from bmsync.ha.vip_move import down_plan, up_plan, vip_down, vip_up
from bmsync.state.operation import OperationLock

log = structlog.get_logger("bmsync.ha")


def _vip(conf: Config) -> VipConfig:
    if conf.ha.vip is None:
        raise ConfigError(
            f"{conf.source}: no 'ha: vip:' section; say which address and interface "
            "(see README, Configuration)"
        )
    return conf.ha.vip


def _print_plan(plan: list[list[str]]) -> int:
    for argv in plan:
        print(shlex.join(argv))
    return 0


def vip_up_command(conf: Config, args: argparse.Namespace) -> int:
    vip = _vip(conf)
    if args.dry_run:
        return _print_plan(up_plan(vip))
    print(asyncio.run(vip_up(vip, force=args.force)))
    return 0


def vip_down_command(conf: Config, args: argparse.Namespace) -> int:
    vip = _vip(conf)
    if args.dry_run:
        return _print_plan(down_plan(vip))
    print(asyncio.run(vip_down(vip)))
    return 0


def fence(conf: Config, args: argparse.Namespace) -> int:
    """Power the peer off through its BMC (or a fence agent) and confirm
    it is off; ``--test`` only reads its power state."""
    fencing = conf.ha.fencing
    if fencing is None:
        raise ConfigError(
            f"{conf.source}: no 'ha.fencing' section; say how this node powers its peer off "
            "(method, address, user, password_file: see README, 'bmsync ha fence')"
        )
    if args.dry_run:
        for line in planned(fencing, args.test):
            print(line)
        return 0
    outcome = run_fence(fencing, test=args.test)
    where = f"{fencing.address}:{fencing.port}"
    if not outcome.ok:
        raise FencingError(f"{outcome.message}; {outcome.advice}")
    if args.test:
        print(f"{outcome.message} (BMC {where}, user {fencing.user}: credentials accepted)")
    else:
        print(outcome.message)
        tell_daemon_fenced(conf)
    return 0


def services_start(conf: Config, args: argparse.Namespace) -> int:
    return _services(conf, args, "start")


def services_stop(conf: Config, args: argparse.Namespace) -> int:
    return _services(conf, args, "stop")


def services_check(conf: Config, args: argparse.Namespace) -> int:
    return _services(conf, args, "check")


def _services(conf: Config, args: argparse.Namespace, step: str) -> int:
    """Run the ``step`` commands of ha.services."""
    services = conf.ha.services
    if services is None:
        raise ConfigError(
            f"{conf.source}: no 'ha: services:' section; list the start and stop "
            "commands of what uses the shared data (see README, Configuration)"
        )
    if args.dry_run:
        return _print_plan([shell_argv(command) for command in commands_of(services, step)])
    for ran in run_step(services, step):
        print(ran.describe(services.timeout_s))
    return 0


def _storage(conf: Config) -> tuple[StorageConfig, ...]:
    if not conf.ha.storage:
        raise ConfigError(
            f"{conf.source}: no 'ha: storage:' entries; list the devices and mount points "
            "of the shared storage (see README, Configuration)"
        )
    return conf.ha.storage


def storage_mount(conf: Config, args: argparse.Namespace) -> int:
    """Mount ha.storage here, unless the peer has any of it mounted."""
    entries = _storage(conf)
    if args.dry_run:
        host = None if conf.peer is None else conf.peer.host
        lines = mount_plan_lines(entries, host, StorageTools())
        for line in lines:
            print(line)
        return 10 if any(line.startswith("# refused") for line in lines) else 0
    asked = [str(e.device) for e in entries if not e.shared]
    peer = asyncio.run(ask_peer(conf, asked))
    mount_storage(entries, peer, args.peer_is_down, say=_say)
    return 0


def storage_unmount(conf: Config, args: argparse.Namespace) -> int:
    """Unmount ha.storage here, stopping what holds it."""
    entries = _storage(conf)
    if args.dry_run:
        lines = unmount_plan_lines(entries, StorageTools())
        for line in lines:
            print(line)
        return 10 if any(line.startswith("# refused") for line in lines) else 0
    unmount_storage(entries, say=_say)
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def status(conf: Config, args: argparse.Namespace) -> int:
    """The HA resources as seen from here; exit 10 when a problem needs
    attention."""
    ha = conf.ha
    if args.dry_run:
        plan: list[list[str]] = []
        if ha.vip is not None:
            plan += [show_argv(ha.vip), detect_argv(ha.vip)]
        if ha.services is not None:
            plan += [shell_argv(command) for command in ha.services.check]
        _print_plan(plan)
        if conf.peer is not None:
            print(f"# and asks the peer's agent ({conf.peer.host}) its role, read-only")
        if ha.fencing is not None:
            for line in planned(ha.fencing, test=True):
                print(line)
        print("# and reads /proc/self/mountinfo for the storage")
        return 0
    report = collect(conf)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for line in _status_lines(conf, report.as_dict()):
            print(line)
    return HaRefused.exit_code if report.problems else 0


def _status_lines(conf: Config, report: dict[str, Any]) -> list[str]:
    role = report["role"]
    lines = [
        f"node {report['node']}: {role['role']} at epoch {role['epoch']}"
        + (f" (STALE: {role['highest_seen']} seen)" if role["stale"] else "")
    ]
    peer = report["peer"]
    if peer is None:
        lines.append("peer: no peer section")
    elif peer["reachable"]:
        lines.append(f"peer {peer['node']}: {peer['role']} at epoch {peer['epoch']}")
    else:
        lines.append(f"peer {peer['node']}: cannot be asked ({peer['error']})")
    last = report["last_operation"]
    if last is not None:
        lines.append(f"last operation: {last['operation']}, {last['result']} ({last['started']})")
        for step in last["steps"]:
            how = "ok" if step["ok"] else f"FAILED: {step['error']}"
            undo = "undo " if step["undo"] else ""
            lines.append(f"  {undo}{step['node']} {step['action']}: {how} ({step['seconds']} s)")
    vip = report["vip"]
    if vip is None:
        lines.append("vip: not configured")
    elif "error" in vip:
        lines.append(f"vip {vip['address']} on {vip['interface']}: check failed: {vip['error']}")
    else:
        held = "held here" if vip["held"] else "not held here"
        others = ", ".join(vip["other_macs"]) or "none"
        lines.append(f"vip {vip['address']} on {vip['interface']}: {held}; other MACs: {others}")
    if not report["storage"]:
        lines.append("storage: not configured")
    for state in report["storage"]:
        if state["mounted_here"]:
            how = f"mounted here ({state['fstype']}{', NETWORK' if state['network'] else ''})"
        elif state["holds"]:
            how = f"holds {state['holds']} ({state['fstype']}), not the configured device"
        elif not state["present"]:
            how = "not mounted; the device is not present on this node"
        else:
            how = "not mounted here"
        lines.append(f"storage {state['mount']} ({state['device']}): {how}")
    for place in report["cyrus"]:
        on = "a NETWORK filesystem" if place["network"] else "block storage"
        lines.append(
            f"cyrus {place['path']}: on {place['fstype']} at {place['mount_point']} ({on})"
        )
    power = report["peer_power"]
    if power is None:
        lines.append("peer power: fencing not configured")
    elif power["read"]:
        lines.append(f"peer power: {power['power']} ({power['message']})")
    else:
        lines.append(f"peer power: cannot read ({power['message']})")
    services = report["services"]
    if services is None:
        lines.append("services: no check commands configured")
    for service in services or []:
        lines.append(
            f"service check '{service['command']}': "
            + ("ok" if service["ok"] else f"FAILED (status {service['status']})")
        )
    lines += [f"problem: {problem}" for problem in report["problems"]]
    return lines


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

        await run_plan(plan, execute, _say, record)
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

        await run_plan(plan, execute, _say, record)
    finally:
        lock.release()
    print(f"{plan.name}: done; {conf.node} is the active node")
    return 0
