"""The commands that run or talk to the daemon: run, status, pause and
resume."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from datetime import UTC, datetime
from typing import Any

from bmsync.cli.daemon_client import NOTHING_CHANGED, RESYNC_TIMEOUT_S
from bmsync.config.model import Config
from bmsync.core.errors import DaemonNotRunning, UsageError
from bmsync.core.guard import Guard, GuardState
from bmsync.sender.daemon import run_daemon
from bmsync.service import control
from bmsync.service.control import check_answer as check
from bmsync.state.directory import ensure_state_dir
from bmsync.state.records import Pause, PauseFlag
from bmsync.state.roles import RoleStore

# `bmsync status` exit codes: running and syncing; running but not syncing.
STATUS_SYNCING = 0
STATUS_NOT_SYNCING = 1
# exit 0 from `bmsync status`: syncing, or the passive node standing by
HEALTHY = {"syncing", "reconciling", "standby"}


def run(conf: Config, args: argparse.Namespace) -> int:
    return run_daemon(conf, dict(os.environ))


def status(conf: Config, args: argparse.Namespace) -> int:
    try:
        answer = asyncio.run(control.request(conf.control_socket, "status", 10))
    except DaemonNotRunning:
        stopped = _stopped(conf)
        if args.json:
            print(json.dumps(stopped, indent=2))
        else:
            print(f"bmsync on {conf.node}: stopped (no daemon answers on {conf.control_socket})")
            print(f"  role            {_role_line(stopped)}")
            if stopped["reason"]:
                print(f"  reason          {stopped['reason']}")
                print("\n".join(f"  cleared by      {c}" for c in stopped["clears"]))
            if stopped["paused_reason"]:
                print(f"  paused because  {stopped['paused_reason']} (until 'bmsync resume')")
        return DaemonNotRunning.exit_code
    check(answer)
    if args.json:
        answer.pop("ok", None)
        print(json.dumps(answer, indent=2))
    else:
        print(_human(answer))
    return STATUS_SYNCING if answer["state"] in HEALTHY else STATUS_NOT_SYNCING


def pause(conf: Config, args: argparse.Namespace) -> int:
    try:
        answer = asyncio.run(control.request(conf.control_socket, "pause", 10, reason=args.reason))
    except DaemonNotRunning:
        return _pause_stopped(conf, args.reason)
    check(answer)
    if not answer["changed"]:
        print(f"bmsync on {conf.node}: already paused ({answer['reason']}); nothing changed")
        return NOTHING_CHANGED
    print(f"bmsync on {conf.node}: {answer['state']}")
    return 0


def _pause_stopped(conf: Config, reason: str) -> int:
    """No daemon: the pause is recorded, and the daemon starts paused."""
    ensure_state_dir(conf.state_dir)
    flag = PauseFlag(conf.state_dir)
    if (current := flag.load()) is not None:
        print(f"bmsync on {conf.node}: already paused ({current.reason}); nothing changed")
        return NOTHING_CHANGED
    flag.save(
        Pause(reason or "paused by an operator (bmsync pause)", datetime.now(UTC).timestamp())
    )
    print(f"bmsync on {conf.node}: paused (no daemon runs; it will start paused)")
    return 0


def resume(conf: Config, args: argparse.Namespace) -> int:
    if args.force and not args.reason.strip():
        raise UsageError(
            'bmsync resume --force needs --reason "...": say why no split-brain is '
            "possible (it is logged and kept in the state directory)"
        )
    if args.force and args.discard:
        raise UsageError("bmsync resume: --force and --discard do not go together")
    try:
        answer = asyncio.run(
            control.request(
                conf.control_socket,
                "resume",
                RESYNC_TIMEOUT_S,
                discard=args.discard,
                force=args.force,
                reason=args.reason,
            )
        )
    except DaemonNotRunning:
        if args.force or args.discard:
            raise
        if PauseFlag(conf.state_dir).clear():
            print(f"bmsync on {conf.node}: resumed (no daemon runs; it will start syncing)")
            return 0
        print(f"bmsync on {conf.node}: not paused; nothing changed")
        return NOTHING_CHANGED
    check(answer)
    state = answer["state"]
    if not answer["changed"]:
        if not args.force:
            what = "not paused"
        elif state == "suspended":
            what = "--force cleared nothing (it never clears 'stale': the peer would refuse)"
        else:
            what = "not suspended; nothing to force"
        print(f"bmsync on {conf.node}: {state}: {what}; nothing changed")
        _print_blockers(answer)
        return NOTHING_CHANGED
    print(f"bmsync on {conf.node}: {state}")
    if state in ("suspended", "maintenance"):
        _print_blockers(answer)
        return NOTHING_CHANGED if args.force else 0
    return 0


def _print_blockers(answer: dict[str, Any]) -> None:
    if answer.get("reason") and answer["state"] not in HEALTHY:
        print(f"  still {answer['state']}: {answer['reason']}")
        for advice in answer.get("clears", []):
            print(f"  cleared by: {advice}")


def _stopped(conf: Config) -> dict[str, Any]:
    peer = conf.peer
    role, record = RoleStore(conf.state_dir, conf.node).load_record()
    guard = Guard.starting(role, 0.0)
    paused = PauseFlag(conf.state_dir).load()
    return {
        "state": "stopped",
        "node": conf.node,
        "peer": None if peer is None else f"{peer.user}@{peer.host}:{peer.port}",
        "lag_s": None,
        "queued": None,
        "last_sync": None,
        "errors": [],
        "role": str(role.role),
        "epoch": role.epoch,
        "highest_seen": {"epoch": role.highest_seen.epoch, "node": role.highest_seen.node},
        "peer_epoch": None,
        "reason": guard.reason if guard.state is not GuardState.SYNCING else None,
        "clears": guard.clears,
        "paused_reason": None if paused is None else paused.reason,
        "since": None,
        "forced": None if record is None else record.forced,
        "role_changed": None if record is None else record.changed,
    }


def _ago(iso: str | None) -> str:
    if iso is None:
        return "never"
    seconds = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    return f"{iso} ({seconds:.1f} s ago)"


def _role_line(s: dict[str, Any]) -> str:
    seen = s["highest_seen"]
    line = f"{s['role']} at epoch {s['epoch']}, highest seen epoch {seen['epoch']}"
    line += f" ({seen['node']})" if seen["node"] else ""
    if s.get("peer_epoch") is not None:
        line += f"; peer {s.get('peer_role')} at epoch {s['peer_epoch']}"
    return line


def _human(s: dict[str, Any]) -> str:
    lines = [f"bmsync on {s['node']}: {s['state']} -> {s['peer']} (pid {s['pid']})"]
    lines.append(f"  role            {_role_line(s)}")
    if s["state"] == "standby":
        lines.append("  standby         this node is passive: it syncs once promoted")
    if s["state"] in ("suspended", "maintenance"):
        lines.append(f"  suspended       since {s['since']}: {s['reason']}")
    if s["state"] == "degraded":
        lines.append(f"  degraded        {s['reason']}")
    if s.get("paused_reason"):
        lines.append(f"  paused because  {s['paused_reason']}")
    lines += [f"  cleared by      {c}" for c in s["clears"]]
    if s.get("forced"):
        lines.append(f"  last forced     {s['forced']}")
    lines += [
        f"  last sync       {_ago(s['last_sync'])}",
        f"  last contact    {_ago(s['last_contact'])}",
        f"  lag             {s['lag_s']:.3f} s, {s['queued']} change(s) queued",
        f"  sent            {s['files_sent']} file(s), {s['bytes_sent']} bytes, "
        f"{s['batches']} batch(es)",
        f"  errors          {s['error_count']}",
    ]
    lines += [f"    {e['time']}  {e['message']}" for e in s["errors"][-5:]]
    if s.get("backups"):
        lines.append(
            f"  changed on the passive node, copies kept there ({s['backup_count']} in all):"
        )
        lines += [f"    {b['time']}  {b['path']} -> {b['kept']}" for b in s["backups"][-5:]]
    if s.get("unsupported"):
        lines.append("  not synced: FIFOs, sockets or device nodes (sync.exclude them to hide):")
        lines += [f"    {path}" for path in s["unsupported"]]
    return "\n".join(lines)
