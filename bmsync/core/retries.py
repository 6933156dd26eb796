"""Paths the peer failed to apply, retried with backoff until they land
(sans I/O, clock injected).

Whatever failed a path (a batch, the reconcile at start, after a reconnect
or an overflow), it is tried again: after ``first_s``, then twice as long
each time up to ``max_s``. Until it lands it counts as not in sync: it is
queued while it waits, and its first failure ages in the lag.
"""

from __future__ import annotations

from dataclasses import dataclass

# The first retry of a failed path, and the longest wait between two.
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 60.0


@dataclass
class _Failing:
    since: float  # when it first failed
    reason: str  # the last failure
    attempts: int
    due: float  # when it is tried again
    waiting: bool  # not yet handed back for its next try


class Retries:
    def __init__(self, first_s: float = RETRY_FIRST_S, max_s: float = RETRY_MAX_S) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._failing: dict[bytes, _Failing] = {}

    def failed(self, path: bytes, reason: str, now: float) -> None:
        entry = self._failing.get(path)
        if entry is None:
            self._failing[path] = _Failing(now, reason, 1, now + self.first_s, True)
            return
        entry.attempts += 1
        entry.reason = reason
        entry.due = now + min(self.max_s, self.first_s * 2 ** (entry.attempts - 1))
        entry.waiting = True

    def landed(self, path: bytes) -> None:
        """The peer acknowledged ``path`` (applied, or deleted as asked)."""
        self._failing.pop(path, None)

    def clear(self) -> None:
        """A reconcile found the peer identical: nothing is failing."""
        self._failing.clear()

    def take_due(self, now: float) -> list[bytes]:
        """Paths whose next try is due; they stay counted until they land."""
        due = [p for p, e in self._failing.items() if e.waiting and e.due <= now]
        for path in due:
            self._failing[path].waiting = False
        return due

    def next_due(self) -> float | None:
        return min((e.due for e in self._failing.values() if e.waiting), default=None)

    @property
    def waiting(self) -> int:
        """Failed paths waiting for their next try (the others are queued
        in the batcher, or in flight)."""
        return sum(1 for e in self._failing.values() if e.waiting)

    def __len__(self) -> int:
        return len(self._failing)

    def oldest(self) -> float | None:
        return min((e.since for e in self._failing.values()), default=None)

    def first(self) -> tuple[bytes, str] | None:
        """The path failing longest, with its last failure."""
        if not self._failing:
            return None
        path, entry = min(self._failing.items(), key=lambda item: item[1].since)
        return path, entry.reason
