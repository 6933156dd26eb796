"""``bmsync ha status``: the report of ``bmsync.ha.status``, as text or
JSON; exit 10 when it found a problem."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bmsync.cli.ha import print_plan
from bmsync.config.model import Config
from bmsync.core.errors import HaRefused
from bmsync.ha.fencing import planned
from bmsync.ha.services import shell_argv
from bmsync.ha.status import collect
from bmsync.ha.vip import detect_argv, show_argv


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
        print_plan(plan)
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
