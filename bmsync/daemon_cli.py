"""The commands that run or talk to the daemon: run, status, pause, resume
(and resync, when a daemon is running)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from datetime import UTC, datetime
from typing import Any

from bmsync import control
from bmsync.config import Config
from bmsync.core.frames import Role
from bmsync.core.guard import AlreadyActive
from bmsync.daemon import run_daemon
from bmsync.errors import BmsyncError, DaemonNotRunning, UsageError
from bmsync.state import RoleStore, ensure_state_dir

# `bmsync status` exit codes: running and syncing; running but not syncing.
STATUS_SYNCING = 0
STATUS_NOT_SYNCING = 1
HEALTHY = {"syncing", "reconciling"}
# A resync through the daemon can take as long as a full reconcile.
RESYNC_TIMEOUT_S = 3600.0


def cmd_run(conf: Config) -> int:
    return run_daemon(conf, dict(os.environ))


def cmd_status(conf: Config, args: argparse.Namespace) -> int:
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
        return DaemonNotRunning.exit_code
    _check(answer)
    if args.json:
        answer.pop("ok", None)
        print(json.dumps(answer, indent=2))
    else:
        print(_human(answer))
    return STATUS_SYNCING if answer["state"] in HEALTHY else STATUS_NOT_SYNCING


def cmd_pause(conf: Config, args: argparse.Namespace) -> int:
    answer = asyncio.run(control.request(conf.control_socket, "pause", 10, reason=args.reason))
    _check(answer)
    print(f"bmsync on {conf.node}: {answer['state']}")
    return 0


def cmd_resume(conf: Config, args: argparse.Namespace) -> int:
    if args.force and not args.reason.strip():
        raise UsageError(
            'bmsync resume --force needs --reason "...": say why no split-brain is '
            "possible (it is logged and kept in the state directory)"
        )
    if args.force and args.discard:
        raise UsageError("bmsync resume: --force and --discard do not go together")
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
    _check(answer)
    line = f"bmsync on {conf.node}: {answer['state']}"
    if args.force and answer.get("reason"):
        line += f" (still: {answer['reason']})"
    print(line)
    return 0


def cmd_role(conf: Config, change: str) -> int:
    """``bmsync promote`` / ``bmsync demote``: the persisted role, then the
    running daemon (if any) is told."""
    ensure_state_dir(conf.state_dir)
    store = RoleStore(conf.state_dir, conf.node)
    before = store.load()
    if change == "promote":
        try:
            after = before.promote()
        except AlreadyActive:
            print(f"bmsync on {conf.node}: already active at epoch {before.epoch}; nothing changed")
            return 0
    else:
        if before.role is Role.PASSIVE:
            print(f"bmsync on {conf.node}: already passive; nothing changed")
            return 0
        after = before.demote()
    store.save(after, f"{_now()} bmsync {change}")
    print(
        f"bmsync on {conf.node}: {after.role} at epoch {after.epoch} "
        f"(highest seen: {after.highest_seen})"
    )
    with contextlib.suppress(DaemonNotRunning):
        asyncio.run(control.request(conf.control_socket, "role", 10))
    return 0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def resync_via_daemon(conf: Config) -> dict[str, Any] | None:
    """Ask a running daemon to reconcile; ``None`` if no daemon runs."""
    try:
        answer = asyncio.run(control.request(conf.control_socket, "resync", RESYNC_TIMEOUT_S))
    except DaemonNotRunning:
        return None
    if "error" in answer:
        raise BmsyncError(f"the daemon refused the resync: {answer['error']}")
    return answer


def _check(answer: dict[str, Any]) -> None:
    if not answer.get("ok", False):
        raise BmsyncError(f"the daemon says: {answer.get('error', answer)}")


def _stopped(conf: Config) -> dict[str, Any]:
    peer = conf.peer
    role, record = RoleStore(conf.state_dir, conf.node).load_record()
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
        "reason": "stale: a higher promotion has been seen" if role.is_stale() else None,
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
    if s["state"] in ("suspended", "maintenance"):
        lines.append(f"  suspended       since {s['since']}: {s['reason']}")
        lines += [f"  cleared by      {c}" for c in s["clears"]]
    if s.get("forced"):
        lines.append(f"  last forced     {s['forced']}")
    if s.get("paused_reason"):
        lines.append(f"  paused because  {s['paused_reason']}")
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
