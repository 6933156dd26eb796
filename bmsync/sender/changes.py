"""The changes waiting to be sent: the watcher's events, batched (the
``Batcher``), bounded by ``sync.queue_limit`` (beyond it, or when events
were lost, one rescan — a reconcile — stands for them all)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from bmsync.config.model import Config
from bmsync.core.batcher import Batch, Batcher
from bmsync.sender.events import Change
from bmsync.sender.watch import Watcher

log = structlog.get_logger("bmsync.daemon")


class Changes:
    def __init__(self, config: Config, clock: Callable[[], float], wake: asyncio.Event) -> None:
        self.config = config
        self._clock = clock
        self._wake = wake  # set on every change
        self.batcher = self._new_batcher()
        self._watcher: Watcher | None = None
        self._watches_fresh = False  # set up since the last reconcile

    def _new_batcher(self) -> Batcher:
        sync = self.config.sync
        return Batcher(sync.batch_window_ms / 1000, sync.max_delay_ms / 1000)

    # -- the watcher --------------------------------------------------------------

    def watch(self) -> None:
        """(Re)start watching ``sync.root`` (on the event loop)."""
        self.stop()
        self._watcher = Watcher(
            self.config.sync.root,
            self.config.syncset(),
            asyncio.get_running_loop(),
            self._on_change,
            self._on_lost,
        )
        self._watcher.start()
        self._watches_fresh = True

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()

    def _on_change(self, changes: list[Change]) -> None:
        now = self._clock()
        for path, settled, deep, delete in changes:
            self.batcher.add(path, now, settled=settled, deep=deep, delete=delete)
        if self.batcher.queued > self.config.sync.queue_limit:
            # bounded while the peer is away: the full reconcile finds it all
            log.warning("queue_full", limit=self.config.sync.queue_limit)
            self.batcher.rescan(now)
        self._wake.set()

    def _on_lost(self, reason: str) -> None:
        """Events were lost: the batcher's rescan (counted in the lag until
        the reconcile has run) replaces whatever it had queued."""
        log.warning("events_lost", reason=reason)
        self._watches_fresh = False  # the reconcile re-creates them before it scans
        self.batcher.rescan(self._clock())
        self._wake.set()

    async def reconciling(self) -> None:
        """A reconcile starts: events from now on are kept; older queued
        ones are covered by its scan. Watches lost are set up again first."""
        self.batcher = self._new_batcher()
        if self._watcher is not None and not self._watches_fresh:
            # a worker thread: re-adding every watch of a large tree, while
            # the old observer's threads end, takes a while
            await asyncio.to_thread(self._watcher.refresh)
        self._watches_fresh = False

    # -- the queue ------------------------------------------------------------------

    def add(self, path: bytes, settled: bool, deep: bool = False) -> None:
        self.batcher.add(path, self._clock(), settled=settled, deep=deep)

    def queue(self, paths: dict[bytes, bool]) -> None:
        """Paths to send again (held back by the brake, or due for a retry)."""
        now = self._clock()
        for path, deep in paths.items():
            self.batcher.add(path, now, settled=True, deep=deep)

    def take(self, now: float) -> Batch | None:
        return self.batcher.take(now)

    def requeue(self, batch: Batch) -> None:
        """Not acknowledged: queued again, and still as old as it was."""
        self.batcher.requeue(batch)
