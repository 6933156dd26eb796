"""What the peer made of what was sent, kept for later: the counters of
``bmsync status``, the paths to retry, the copies the passive node kept of
files changed there; and the answer a ``bmsync resync`` waits for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from bmsync.core.errors import BmsyncError, PeerUnreachable
from bmsync.core.frames import BASE_MISMATCH, Failure
from bmsync.core.ops import Op
from bmsync.core.paths import show
from bmsync.core.retries import Retries
from bmsync.link.session import Outcome
from bmsync.sender.reconcile import ResyncReport
from bmsync.sender.status import Stats
from bmsync.state.records import BackupLog, KeptCopy

log = structlog.get_logger("bmsync.daemon")


class Outcomes:
    def __init__(
        self,
        stats: Stats,
        retries: Retries,
        backups: BackupLog,
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self._stats = stats
        self._retries = retries
        self._backups = backups
        self._clock = clock
        self._wall = wall
        self._resync_waiters: list[asyncio.Future[dict[str, Any]]] = []

    def batch(
        self, changed: dict[bytes, bool], ops: list[Op], outcome: Outcome, started: float
    ) -> None:
        """A batch was applied (``started``: monotonic)."""
        stats = self._stats
        self._kept(outcome.backups)
        self._failures_retried(outcome.failures, landed=changed)
        duration_ms = round((self._clock() - started) * 1000, 2)
        stats.batches += 1
        stats.files_sent += outcome.files_sent
        stats.bytes_sent += outcome.bytes_sent
        stats.last_sync = stats.last_contact = self._wall()
        stats.last_batch = {
            "paths": len(changed),
            "ops": len(ops),
            "bytes": outcome.bytes_sent,
            "deltas": outcome.deltas,
            "duration_ms": duration_ms,
            "failures": len(outcome.failures),
        }
        log.info(
            "batch_applied",
            paths=len(changed),
            ops=len(ops),
            bytes=outcome.bytes_sent,
            duration_ms=duration_ms,
            failures=len(outcome.failures),
        )

    def in_sync(self, paths: Iterable[bytes]) -> None:
        """Retried paths found in sync meanwhile."""
        for path in paths:
            self._retries.landed(path)

    def reconciled(self, report: ResyncReport, started: float) -> dict[str, Any]:
        """A reconcile ended (``started``: monotonic); the answer to the
        ``bmsync resync`` requests that waited for it."""
        stats = self._stats
        stats.last_contact = self._wall()
        self._kept(report.backups)
        stats.files_sent += report.files_sent
        stats.bytes_sent += report.bytes_sent
        if report.converged and not report.failures:
            self._retries.clear()
        else:
            self._failures_retried(report.failures, landed=report.sent)
        for path, reason in report.local_problems:
            stats.error(f"{show(path)}: {reason}")
        if report.halted is None and report.converged:
            stats.last_sync = self._wall()
        log.info(
            "reconciled",
            ops=report.ops_applied,
            files=report.files_sent,
            bytes=report.bytes_sent,
            converged=report.converged,
            duration_ms=round((self._clock() - started) * 1000, 1),
        )
        return {
            "ok": report.halted is None and not report.failures,
            "converged": report.converged,
            "ops_applied": report.ops_applied,
            "files_sent": report.files_sent,
            "bytes_sent": report.bytes_sent,
            "failures": [{"path": show(f.path), "reason": f.reason} for f in report.failures],
            "halted": report.halted,
        }

    def resync_waiter(self) -> asyncio.Future[dict[str, Any]]:
        """Answered when the next reconcile ends (``bmsync resync``)."""
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._resync_waiters.append(waiter)
        return waiter

    def answer_resyncs(self, outcome: dict[str, Any] | BaseException) -> None:
        """Answer every `bmsync resync` waiting on this reconcile."""
        waiters, self._resync_waiters = self._resync_waiters, []
        for waiter in waiters:
            if waiter.done():
                continue
            if isinstance(outcome, BmsyncError):
                waiter.set_exception(outcome)
            elif isinstance(outcome, BaseException):
                waiter.set_exception(
                    PeerUnreachable(f"the reconcile was interrupted ({outcome or 'link lost'})")
                )
            else:
                waiter.set_result(outcome)

    def _kept(self, backups: list[tuple[bytes, str]]) -> None:
        for path, kept in backups:
            log.warning("passive_copy_kept", path=show(path), kept=kept)
        self._backups.add([KeptCopy(self._wall(), show(path), kept) for path, kept in backups])

    def _failures_retried(self, failures: list[Failure], landed: Iterable[bytes]) -> None:
        """Paths the peer failed to apply are tried again with backoff until
        they land, whatever pass failed them; ``landed``: the other paths
        of that pass, applied (or found in sync)."""
        failed = {f.path for f in failures if f.code != BASE_MISMATCH}
        for path in landed:
            if path not in failed:
                self._retries.landed(path)
        now = self._clock()
        for failure in failures:
            if failure.code != BASE_MISMATCH:
                self._stats.error(f"{show(failure.path)}: {failure.reason}")
                self._retries.failed(failure.path, failure.reason, now)
