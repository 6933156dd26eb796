"""The commands that run or talk to the daemon: run, status, pause, resume
(and resync, when a daemon is running)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from datetime import UTC, datetime
from typing import Any

from bmsync import control
from bmsync.config import Config
from bmsync.daemon import run_daemon
from bmsync.errors import BmsyncError, DaemonNotRunning

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
        if args.json:
            print(json.dumps(_stopped(conf), indent=2))
        else:
            print(f"bmsync on {conf.node}: stopped (no daemon answers on {conf.control_socket})")
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
    answer = asyncio.run(
        control.request(conf.control_socket, "resume", RESYNC_TIMEOUT_S, discard=args.discard)
    )
    _check(answer)
    print(f"bmsync on {conf.node}: {answer['state']}")
    return 0


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
    return {
        "state": "stopped",
        "node": conf.node,
        "peer": None if peer is None else f"{peer.user}@{peer.host}:{peer.port}",
        "lag_s": None,
        "queued": None,
        "last_sync": None,
        "errors": [],
    }


def _ago(iso: str | None) -> str:
    if iso is None:
        return "never"
    seconds = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    return f"{iso} ({seconds:.1f} s ago)"


def _human(s: dict[str, Any]) -> str:
    lines = [f"bmsync on {s['node']}: {s['state']} -> {s['peer']} (pid {s['pid']})"]
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
    return "\n".join(lines)
