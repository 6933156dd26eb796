"""What a watchdog event means for the sync set: the changed paths, each
relative to the root with three flags, and whether events were lost.

Pure (no I/O, no threads): the watcher calls it for every event on the
observer thread, and the tests drive it with event objects directly.

- ``settled``: the event says the path is complete (a written file was
  closed, a rename, a delete, an attribute change, a new directory); a
  ``modify`` without a close yet is not settled.
- ``deep``: the whole subtree must be looked at (a directory created or
  moved in may have filled before its watch existed).
- ``delete``: the path is gone (the batch waits for the rest of an
  ``rm -rf`` before it plans).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
)

from bmsync.core.excludes import SyncSet

# (path, settled, deep, delete) for each path an event touched: a move's two
# paths arrive in one call, so no batch can take one without the other
Change = tuple[bytes, bool, bool, bool]


@dataclass(frozen=True)
class EventMeaning:
    changes: list[Change] = field(default_factory=list)
    lost: str | None = None  # events were lost: a full reconcile is due


class EventMapper:
    """Maps events below ``root`` (a directory, absolute) to changes of
    ``syncset``; paths outside it, or excluded, are dropped."""

    def __init__(self, root: bytes, syncset: SyncSet) -> None:
        self._root = root.rstrip(b"/") + b"/"
        self._syncset = syncset

    def relative(self, path: str | bytes) -> bytes | None:
        raw = os.fsencode(path)
        if not raw.startswith(self._root):
            return None
        rel = raw[len(self._root) :].rstrip(b"/")
        if not rel or self._syncset.top_of(rel) is None:
            return None
        return rel

    def _change(
        self, path: str | bytes, is_dir: bool, settled: bool, deep: bool, delete: bool = False
    ) -> list[Change]:
        rel = self.relative(path)
        if rel is None or not self._syncset.covers(rel, is_dir):
            return []
        return [(rel, settled, deep, delete)]

    def meaning(self, event: FileSystemEvent) -> EventMeaning:
        is_dir = event.is_directory
        if isinstance(event, (FileMovedEvent, DirMovedEvent)):
            return EventMeaning(
                self._change(event.src_path, is_dir, True, is_dir)
                + self._change(event.dest_path, is_dir, True, is_dir)
            )
        if isinstance(event, DirCreatedEvent):
            return EventMeaning(self._change(event.src_path, True, True, True))
        if isinstance(event, (FileCreatedEvent, FileModifiedEvent)):
            return EventMeaning(self._change(event.src_path, False, False, False))
        if isinstance(event, DirDeletedEvent):
            rel = self.relative(event.src_path)
            lost = None
            if rel is not None and rel in self._syncset.tops:
                lost = f"watched tree {os.fsdecode(event.src_path)} removed"
            return EventMeaning(self._change(event.src_path, True, True, True, delete=True), lost)
        if isinstance(event, FileDeletedEvent):
            return EventMeaning(self._change(event.src_path, False, True, False, delete=True))
        # attributes, close-after-write
        return EventMeaning(self._change(event.src_path, is_dir, True, False))
