"""What ``bmsync status`` shows of the daemon: its state (derived from what
is true, never set by a step of the loop), the counters, the errors kept,
and why nothing is sent and what clears it."""

from __future__ import annotations

import enum
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from bmsync.config.model import Config
from bmsync.core.guard import Guard, GuardState
from bmsync.core.paths import show
from bmsync.core.retries import Retries
from bmsync.state.records import BackupLog

if TYPE_CHECKING:
    from bmsync.sender.hold import Hold
    from bmsync.sender.link import Link

log = structlog.get_logger("bmsync.daemon")

# Errors kept for `bmsync status`.
ERRORS_KEPT = 10


class State(enum.StrEnum):
    """The ``state`` of ``bmsync status`` (a public contract)."""

    RECONCILING = "reconciling"
    SYNCING = "syncing"
    DEGRADED = "degraded"  # connected, but some paths fail on the peer (retried)
    PAUSED = "paused"
    DISCONNECTED = "disconnected"
    SUSPENDED = "suspended"  # the guard: a split-brain is suspected
    MAINTENANCE = "maintenance"
    STANDBY = "standby"  # the passive node: it syncs once promoted
    STOPPED = "stopped"


@dataclass
class Stats:
    wall: Callable[[], float] = time.time
    files_sent: int = 0
    bytes_sent: int = 0
    batches: int = 0
    last_sync: float | None = None  # wall clock
    last_contact: float | None = None
    last_batch: dict[str, Any] | None = None
    errors: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=ERRORS_KEPT))
    error_count: int = 0

    def error(self, message: str) -> None:
        log.error("sync_error", error=message)
        self.errors.append((self.wall(), message))
        self.error_count += 1


def iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


def derive_state(
    *,
    stopped: bool,
    standby: bool,
    guard: Guard,
    paused: bool,
    connected: bool,
    retries: Retries,
    reconciling: bool,
) -> State:
    if stopped:
        return State.STOPPED
    if guard.state is GuardState.MAINTENANCE:
        return State.MAINTENANCE
    if standby:
        return State.STANDBY
    if guard.state is GuardState.SUSPENDED:
        return State.SUSPENDED
    if paused:
        return State.PAUSED
    if not connected:
        return State.DISCONNECTED
    if retries:
        return State.DEGRADED
    return State.RECONCILING if reconciling else State.SYNCING


def blocked(
    guard: Guard, hold: Hold, retries: Retries
) -> tuple[str | None, float | None, list[str]]:
    """Why nothing is sent (the guard first, then a pause), since when
    (wall clock), and what clears it."""
    if guard.state is not GuardState.SYNCING:
        return guard.reason, guard.since, guard.clears
    if hold.paused_reason is None:
        first = retries.first()
        if first is None:
            return None, None, []
        path, why = first
        return (
            f"{len(retries)} path(s) not applied on the peer (retried every "
            f"{retries.first_s:g} to {retries.max_s:g} s); first: {show(path)}: "
            f"{why}",
            None,
            [
                "the cause fixed on the peer (disk space, permissions, immutable files...): "
                "the next retry then lands; 'bmsync status' lists the errors"
            ],
        )
    return hold.blocked()


def systemd_line(state: State, config: Config, guard: Guard, why: str | None, detail: str) -> str:
    """The STATUS= line of ``systemctl status``."""
    if state is State.SUSPENDED or state is State.MAINTENANCE:
        detail = guard.reason or ""
    elif state is State.PAUSED or state is State.DEGRADED:
        detail = why or ""
    elif state in (State.SYNCING, State.RECONCILING) and config.peer is not None:
        detail = f"to {config.peer.host}"
    elif state is State.STANDBY:
        detail = "passive; syncs from here once promoted"
    return f"{state}: {detail}" if detail else str(state)


@dataclass
class StatusView:
    """The collaborators ``bmsync status`` reads."""

    stats: Stats
    link: Link
    hold: Hold
    retries: Retries
    backups: BackupLog
    started: float  # wall clock

    def blocked(self) -> tuple[str | None, float | None, list[str]]:
        return blocked(self.link.guard, self.hold, self.retries)

    def document(
        self,
        state: State,
        config: Config,
        *,
        now: float,
        oldest: Iterable[float | None],
        queued: int,
        unsupported: list[str],
    ) -> dict[str, Any]:
        """``now``, ``oldest``: monotonic; the lag is that of the oldest
        change not yet acknowledged."""
        times = [t for t in (*oldest, self.hold.held_since, self.retries.oldest()) if t is not None]
        peer = config.peer
        stats = self.stats
        return {
            "state": str(state),
            "node": config.node,
            "peer": None if peer is None else f"{peer.user}@{peer.host}:{peer.port}",
            "pid": os.getpid(),
            "started": iso(self.started),
            "last_contact": iso(stats.last_contact),
            "last_sync": iso(stats.last_sync),
            "last_batch": stats.last_batch,
            "lag_s": round(now - min(times), 3) if times else 0.0,
            "queued": queued + len(self.hold.held) + self.retries.waiting,
            "files_sent": stats.files_sent,
            "bytes_sent": stats.bytes_sent,
            "batches": stats.batches,
            "paused_reason": self.hold.paused_reason,
            "errors": [{"time": iso(t), "message": m} for t, m in stats.errors],
            "error_count": stats.error_count,
            "backups": [
                {"time": iso(b.time), "path": b.path, "kept": b.kept} for b in self.backups.recent
            ],
            "backup_count": self.backups.count,
            "unsupported": unsupported,
            **self._guard_status(),
        }

    def _guard_status(self) -> dict[str, Any]:
        guard, me = self.link.guard, self.link.guard.role
        reason, since, clears = self.blocked()
        return {
            "role": str(me.role),
            "epoch": me.epoch,
            "highest_seen": {"epoch": me.highest_seen.epoch, "node": me.highest_seen.node},
            "peer_role": None if self.link.peer_role is None else str(self.link.peer_role),
            "peer_epoch": self.link.peer_epoch,
            "peer_seen": {"epoch": guard.peer_seen.epoch, "node": guard.peer_seen.node},
            "reason": reason,
            "since": iso(since),
            "clears": clears,
            "forced": guard.forced_reason,
        }
