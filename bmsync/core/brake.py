"""The delete-storm brake (sans I/O, clock injected).

A mistaken ``rm -rf``, an unmounted filesystem or a package purge makes many
synced files disappear at once; propagating that would empty the passive
node too, and lsyncd users lose whole trees this way. When the deletions
planned within ``window_s`` exceed ``max_count`` files, or ``max_share`` of
the synced files (and at least ``SHARE_FLOOR`` files, so that deleting two
files of five is not a storm), the brake trips: the daemon pauses and waits
for an operator.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from bmsync.core.manifest import Entry, Kind
from bmsync.core.ops import Delete, Op, PutFile, Symlink

# Below this many deletions the share rule never trips.
SHARE_FLOOR = 20


@dataclass(frozen=True)
class BrakeLimits:
    max_count: int = 100
    max_share: float = 0.10
    window_s: float = 60.0


class DeleteBrake:
    def __init__(self, limits: BrakeLimits) -> None:
        self.limits = limits
        self._recent: deque[tuple[float, int]] = deque()

    def _in_window(self, now: float) -> int:
        while self._recent and self._recent[0][0] <= now - self.limits.window_s:
            self._recent.popleft()
        return sum(count for _, count in self._recent)

    def check(self, deletes: int, synced_files: int, now: float) -> str | None:
        """The reason to stop, if ``deletes`` more file deletions now would
        make a storm; ``None`` if they may go."""
        if deletes == 0:
            return None
        total = self._in_window(now) + deletes
        limits = self.limits
        share = total / synced_files if synced_files else 1.0
        if total > limits.max_count or (total >= SHARE_FLOOR and share > limits.max_share):
            return (
                f"delete storm: {total} of {synced_files} synced files would be deleted "
                f"within {limits.window_s:g} s (limits: {limits.max_count} files or "
                f"{limits.max_share:.0%})"
            )
        return None

    def record(self, deletes: int, now: float) -> None:
        if deletes:
            self._recent.append((now, deletes))

    def reset(self) -> None:
        self._recent.clear()


def lost_files(ops: list[Op], peer: Mapping[bytes, Entry]) -> int:
    """Files and symlinks the plan deletes on the peer whose content does
    not reappear elsewhere in it: a moved directory is not a loss."""
    kept = {op.entry.digest or op.entry.target for op in ops if isinstance(op, (PutFile, Symlink))}
    lost = 0
    for op in ops:
        if isinstance(op, Delete) and op.kind != Kind.DIR:
            entry = peer.get(op.path)
            if entry is None or (entry.digest or entry.target) not in kept:
                lost += 1
    return lost


def synced_files(manifest: Mapping[bytes, Entry]) -> int:
    return sum(1 for e in manifest.values() if e.kind != Kind.DIR)
