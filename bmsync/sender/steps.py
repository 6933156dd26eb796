"""The daemon's work on a session: a full reconcile, or one batch of
changes, and the buffers they leave to give back once it is idle. The loop
(``daemon``) decides when; this does it and keeps what the status reads
(a reconcile running, the oldest change in flight)."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from bmsync.core.batcher import Batch
from bmsync.core.frames import BASE_MISMATCH
from bmsync.core.ops import PutFile
from bmsync.core.paths import show
from bmsync.fs.files import release_free_memory
from bmsync.link.session import PeerSession
from bmsync.sender.changes import Changes
from bmsync.sender.hold import Hold
from bmsync.sender.outcomes import Outcomes
from bmsync.sender.peer_view import PeerView
from bmsync.sender.pipeline import Halted, Pipeline
from bmsync.sender.reconcile import reconcile
from bmsync.sender.status import Stats

log = structlog.get_logger("bmsync.daemon")

# A batch this large (bytes of files read, or operations) leaves freed
# buffers behind; they go back to the system when the daemon is next idle.
TRIM_AFTER_BYTES = 1 << 20
TRIM_AFTER_OPS = 1000


class Steps:
    def __init__(
        self,
        *,
        pipeline: Pipeline,
        view: PeerView,
        changes: Changes,
        outcomes: Outcomes,
        hold: Hold,
        stats: Stats,
        clock: Callable[[], float],
        stopping: Callable[[], bool],
        tell_systemd: Callable[[], None],
    ) -> None:
        self._pipeline = pipeline
        self._view = view
        self._changes = changes
        self._outcomes = outcomes
        self._hold = hold
        self._stats = stats
        self._clock = clock
        self._stopping = stopping
        self._tell_systemd = tell_systemd
        self.reconciling = False
        self.inflight_oldest: float | None = None  # the oldest change of the batch in flight
        self._trim_pending = False  # large buffers freed since the last idle

    async def trim(self) -> None:
        """Idle: give back what the last large batches freed."""
        if self._trim_pending:
            await self._view.bases_copied()  # its buffers are freed too
            self._trim_pending = False
            release_free_memory()

    async def reconcile(self, session: PeerSession) -> None:
        self._trim_pending = True
        self.reconciling = True
        self._tell_systemd()
        try:
            await self._reconcile(session)
        except BaseException as exc:
            self._outcomes.answer_resyncs(exc)
            raise
        finally:
            self.reconciling = False

    async def _reconcile(self, session: PeerSession) -> None:
        await self._changes.reconciling()
        started = self._clock()
        await self._view.bases_copied()
        report = await reconcile(
            self._pipeline,
            session,
            expected=await self._view.expected(session.peer.node if session.peer else ""),
            brake=self._hold.for_reconcile(),
            stopping=self._stopping,
        )
        self._trim_pending |= self._view.copy_bases(report.sent)
        answer = self._outcomes.reconciled(report, started)
        self._pipeline.unsupported.update(report.unsupported)
        self._pipeline.links.replace(report.links)
        if report.halted is not None:
            self._hold.pause(report.halted, held={})
            self._tell_systemd()
        self._outcomes.answer_resyncs(answer)

    async def apply(self, session: PeerSession, batch: Batch) -> None:
        started = self._clock()
        await self._view.bases_copied()
        self.inflight_oldest = batch.oldest_s
        try:
            with self._pipeline.opened() as root_fd:
                result = await self._pipeline.batch(session, root_fd, batch.paths, self._hold)
        except BaseException:
            self._changes.requeue(batch)  # not acknowledged (the link died under it)
            raise
        finally:
            self.inflight_oldest = None
        for path, reason in result.scan.problems:
            self._stats.error(f"{show(path)}: {reason}")
        changed, ops, outcome = result.changed, result.ops, result.sent
        if outcome is None:
            self._outcomes.in_sync(changed)
        elif isinstance(outcome, Halted):
            self._hold.pause(outcome.reason, held=changed)
            self._tell_systemd()
        else:
            read = sum(op.entry.size for op in ops if isinstance(op, PutFile))
            if read >= TRIM_AFTER_BYTES or len(ops) >= TRIM_AFTER_OPS:
                self._trim_pending = True
            self._trim_pending |= self._view.copy_bases(outcome.results)
            for path in outcome.changing:
                self._changes.add(path, settled=False)
            for failure in outcome.failures:
                if failure.code == BASE_MISMATCH:  # the peer's copy was not our base: send it whole
                    log.info("delta_base_stale", path=show(failure.path))
                    self._changes.add(failure.path, settled=True)
            self._outcomes.batch(changed, ops, outcome, started)
