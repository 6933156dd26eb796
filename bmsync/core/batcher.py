"""Batching file-system events into sync batches (sans I/O, clock injected).

Latency matters more than a tidy debounce. A path whose event says it is
complete ("settled": a written file was closed, a rename, a chmod, a new
directory) is ready at once; a path still being written
(a modify without a close yet) is ready once it has been quiet for
``window_s``, or ``max_delay_s`` after its first event whatever happens.

Deletions wait until no deletion has arrived for ``window_s`` (or
``max_delay_s``): a lone ``rm`` still goes out within the window, but an
``rm -rf`` arrives as one batch, so the delete-storm brake sees the whole
storm before any of it reaches the peer.

The caller takes a batch only while nothing is in flight: whatever arrives
while a batch is being applied waits and leaves together with the next one
(group commit). So a single edit goes out immediately, and a burst of 500
files goes out in a few batches, not 500.

Per path only the latest state matters: the batch names paths, and the
daemon reads their state when it takes the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Pending:
    first_s: float
    last_s: float
    settled: bool
    deep: bool
    delete: bool


@dataclass(frozen=True)
class Batch:
    """Paths to reconcile (``True``: the whole subtree, e.g. a new or moved-in
    directory), or a full rescan when events were lost."""

    paths: dict[bytes, bool] = field(default_factory=dict)
    rescan: bool = False
    oldest_s: float | None = None  # first event time of the oldest change in it


class Batcher:
    def __init__(self, window_s: float, max_delay_s: float) -> None:
        if window_s < 0 or max_delay_s <= 0:
            raise ValueError("window must be >= 0 and max delay > 0")
        self.window_s = window_s
        self.max_delay_s = max(max_delay_s, window_s)
        self._pending: dict[bytes, _Pending] = {}
        self._rescan_since: float | None = None
        self._rescan_oldest = 0.0  # first event among those the rescan covers
        self._last_delete_s = float("-inf")

    def add(
        self, path: bytes, now: float, *, settled: bool, deep: bool = False, delete: bool = False
    ) -> None:
        """Record an event on ``path``. A later unsettled event (another
        write) un-settles it; deep stays once set; ``delete``: the event
        removed the path (the latest event decides)."""
        if delete:
            self._last_delete_s = max(self._last_delete_s, now)
        if self._rescan_since is not None:
            return  # the full reconcile to come covers it
        entry = self._pending.get(path)
        if entry is None:
            self._pending[path] = _Pending(now, now, settled, deep, delete)
            return
        entry.last_s = max(entry.last_s, now)
        entry.settled = settled
        entry.deep = entry.deep or deep
        entry.delete = delete

    def rescan(self, now: float) -> None:
        """Events were lost (queue overflow, lost watch), or too many are
        queued: reconcile everything. Queued paths are dropped, and later
        ones not kept, since that reconcile covers them all: the queue
        stays bounded however long the peer is away."""
        if self._rescan_since is None:
            self._rescan_since = now
            self._rescan_oldest = min((p.first_s for p in self._pending.values()), default=now)
        self._pending.clear()

    def requeue(self, batch: Batch) -> None:
        """A batch taken but not acknowledged (the link died under it): its
        paths wait again, ready at once, as old as the batch was, so the
        lag keeps counting from the first change."""
        first = batch.oldest_s if batch.oldest_s is not None else float("-inf")
        if batch.rescan or self._rescan_since is not None:
            self.rescan(first)
            self._rescan_oldest = min(self._rescan_oldest, first)
            return
        for path, deep in batch.paths.items():
            entry = self._pending.get(path)
            if entry is None:
                self._pending[path] = _Pending(first, first, True, deep, False)
            else:
                entry.first_s = min(entry.first_s, first)
                entry.deep = entry.deep or deep

    @property
    def queued(self) -> int:
        return len(self._pending) + (1 if self._rescan_since is not None else 0)

    def oldest(self) -> float | None:
        """First-event time of the oldest queued change (for lag)."""
        times = [p.first_s for p in self._pending.values()]
        if self._rescan_since is not None:
            times.append(self._rescan_oldest)
        return min(times, default=None)

    def _ready_at(self, pending: _Pending) -> float:
        cap = pending.first_s + self.max_delay_s
        if pending.delete:
            return min(max(pending.first_s, self._last_delete_s + self.window_s), cap)
        if pending.settled:
            return pending.first_s  # ready since it settled; no later than this
        return min(pending.last_s + self.window_s, cap)

    def next_deadline(self) -> float | None:
        """When ``take`` will next return a batch if called, or ``None`` when
        nothing is queued. A time in the past means now."""
        if self._rescan_since is not None:
            return self._rescan_since
        return min((self._ready_at(p) for p in self._pending.values()), default=None)

    def take(self, now: float) -> Batch | None:
        """Everything ready at ``now``; unsettled paths that are not ready
        stay queued. ``None`` when nothing is ready."""
        if self._rescan_since is not None:
            oldest = self.oldest()
            self._pending.clear()
            self._rescan_since = None
            return Batch(rescan=True, oldest_s=oldest)
        ready = {p: e for p, e in self._pending.items() if self._ready_at(e) <= now}
        if not ready:
            return None
        for path in ready:
            del self._pending[path]
        return Batch(
            paths={p: e.deep for p, e in ready.items()},
            oldest_s=min(e.first_s for e in ready.values()),
        )
