"""The inotify watcher: watchdog's inotify backend, events handed to asyncio.

watchdog's observer thread turns inotify events into ``FileSystemEvent``s;
this module maps each to a relative path and two flags, and hands them to
the asyncio loop with ``call_soon_threadsafe`` (the observer thread never
waits on us):

- ``settled``: the event says the path is complete (a written file was
  closed, a rename, a delete, an attribute change, a new directory); a
  ``modify`` without a close yet is not settled.
- ``deep``: the whole subtree must be looked at (a directory created or
  moved in may have filled before its watch existed).

Lost events (inotify queue overflow, a watched tree removed) are reported
through ``on_lost`` so the daemon runs a full reconcile: events are hints,
the scan is the truth.

Trees are watched recursively; a single file (``/etc/aliases`` outside a
watched tree, ``elasticsearch.yml``) by watching its parent directory and
keeping only its own events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyFD

from bmsync.core.excludes import SyncSet

log = structlog.get_logger("bmsync.watch")

# (path, settled, deep, delete) for each path an event touched: a move's two
# paths arrive in one call, so no batch can take one without the other
Change = tuple[bytes, bool, bool, bool]
OnChange = Callable[[list[Change]], None]
OnLost = Callable[[str], None]

# Only these events matter; open/close-without-write are not subscribed.
EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirAttribEvent,
    DirDeletedEvent,
    DirMovedEvent,
]


class _WatchGroup(InotifyWatchGroup):
    """watchdog rebuilds its watches after an overflow but does not tell the
    application that events were lost; this subclass does."""

    on_overflow: Callable[[], None] | None = None

    def on_queue_overflow(self) -> None:
        super().on_queue_overflow()
        if self.on_overflow is not None:
            self.on_overflow()


class _Emitter(InotifyEmitter):
    def __init__(self, *args: Any, on_overflow: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_overflow = on_overflow

    def on_thread_start(self) -> None:
        group = _WatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink,
        )
        group.on_overflow = self._on_overflow
        self._inotify = group


class _Observer(BaseObserver):
    def __init__(self, on_overflow: Callable[[], None]) -> None:
        self._inotify_fd = InotifyFD()
        self._inotify_fd.start()
        super().__init__(_Emitter, inotify_fd=self._inotify_fd, on_overflow=on_overflow)

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self._inotify_fd.stop()
        self._inotify_fd.join()


class Watcher(FileSystemEventHandler):
    def __init__(
        self,
        root: Path,
        syncset: SyncSet,
        loop: asyncio.AbstractEventLoop,
        on_change: OnChange,
        on_lost: OnLost,
    ) -> None:
        self._root = os.fsencode(root).rstrip(b"/") + b"/"
        self._syncset = syncset
        self._loop = loop
        self._on_change = on_change
        self._on_lost = on_lost
        self._observer = _Observer(on_overflow=self._overflowed)
        self._watches: list[ObservedWatch] = []

    # -- set-up ------------------------------------------------------------

    def start(self) -> None:
        self._schedule()
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join()

    def refresh(self) -> None:
        """Re-create the watches (after a reconcile: a tree may have appeared)."""
        for watch in self._watches:
            self._observer.unschedule(watch)
        self._watches = []
        self._schedule()

    def _schedule(self) -> None:
        wanted: dict[bytes, bool] = {}
        for top in self._syncset.tops:
            full = self._root + top if top else self._root
            if os.path.isdir(full) and not os.path.islink(full):
                wanted[full] = True
            else:
                wanted.setdefault(os.path.dirname(full.rstrip(b"/")), False)
        for path, recursive in sorted(wanted.items()):
            if not os.path.isdir(path):
                log.warning("watch_skipped", path=os.fsdecode(path), reason="no such directory")
                continue
            try:
                watch = self._observer.schedule(
                    self, os.fsdecode(path), recursive=recursive, event_filter=EVENTS
                )
            except OSError as exc:
                log.error(
                    "watch_failed",
                    path=os.fsdecode(path),
                    error=str(exc),
                    hint="raise fs.inotify.max_user_watches (sysctl) if this says ENOSPC",
                )
                self._hand(self._on_lost, f"cannot watch {os.fsdecode(path)}: {exc}")
                continue
            self._watches.append(watch)
        log.info("watching", directories=len(self._watches))

    # -- events (observer thread) -----------------------------------------

    def _hand(self, func: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(func, *args)

    def _overflowed(self) -> None:
        self._hand(self._on_lost, "inotify queue overflow")

    def _relative(self, path: str | bytes) -> bytes | None:
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
        rel = self._relative(path)
        if rel is None or not self._syncset.covers(rel, is_dir):
            return []
        return [(rel, settled, deep, delete)]

    def dispatch(self, event: FileSystemEvent) -> None:
        is_dir = event.is_directory
        if isinstance(event, (FileMovedEvent, DirMovedEvent)):
            changes = self._change(event.src_path, is_dir, True, is_dir) + self._change(
                event.dest_path, is_dir, True, is_dir
            )
        elif isinstance(event, DirCreatedEvent):
            changes = self._change(event.src_path, True, True, True)
        elif isinstance(event, (FileCreatedEvent, FileModifiedEvent)):
            changes = self._change(event.src_path, False, False, False)
        elif isinstance(event, DirDeletedEvent):
            changes = self._change(event.src_path, True, True, True, delete=True)
            rel = self._relative(event.src_path)
            if rel is not None and rel in self._syncset.tops:
                self._hand(self._on_lost, f"watched tree {os.fsdecode(event.src_path)} removed")
        elif isinstance(event, FileDeletedEvent):
            changes = self._change(event.src_path, False, True, False, delete=True)
        else:  # attributes, close-after-write
            changes = self._change(event.src_path, is_dir, True, False)
        if changes:
            self._hand(self._on_change, changes)
