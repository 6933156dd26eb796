"""The inotify watcher: watchdog's inotify backend, events handed to asyncio.

watchdog's observer thread turns inotify events into ``FileSystemEvent``s;
``events.EventMapper`` maps each to relative paths and flags, and this
module hands them to the asyncio loop (the observer thread never waits on us). They are queued
under a lock and handed over in one ``call_soon_threadsafe`` per drain, not
one per event: each such call writes a byte to the loop's self-pipe, the
same one that carries signals, and an event storm of one call per event
filled it, so that SIGTERM was lost (issue 11 item 14). Should the loop
fall behind by more than ``MAX_QUEUED`` changes, they are dropped and
reported as lost (the reconcile finds them).

Lost events (inotify queue overflow, a watched tree removed) are reported
through ``on_lost`` so the daemon runs a full reconcile: events are hints,
the scan is the truth. That reconcile first re-creates the watches
(``refresh``), in a new inotify instance, then scans.

watchdog's own repair after an overflow (remove every watch, add them all
again) is not used: each removed watch queues an IN_IGNORED event, so with
more directories than ``fs.inotify.max_queued_events`` the repair overflows
the queue again, and again, a loop that kept reporting overflows (and
restarting reconciles) long after the burst. Removing the old watches in
``refresh`` queues those events in the old instance, which is closed.

Trees are watched recursively; a single file (``/etc/aliases`` outside a
watched tree, ``elasticsearch.yml``) by watching its parent directory and
keeping only its own events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
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
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyFD, WatchDescriptor

from bmsync.core.excludes import SyncSet
from bmsync.sender.events import Change, EventMapper

log = structlog.get_logger("bmsync.watch")

OnChange = Callable[[list[Change]], None]
OnLost = Callable[[str], None]

# Changes waiting for the loop beyond this many: dropped, reported as lost.
MAX_QUEUED = 100_000

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
    """Tells the application that events were lost (watchdog does not), and
    leaves the watches alone: the reconcile that follows re-creates them."""

    def __init__(self, *args: Any, on_overflow: Callable[[], None], **kwargs: Any) -> None:
        self._on_overflow = on_overflow  # before the watches exist
        super().__init__(*args, **kwargs)

    def on_queue_overflow(self) -> None:
        with self._lock:
            if self.is_active:
                self._move_event_grouper.discard_pending_events()
        self._on_overflow()

    def _remove_watch_internally(self, wd: WatchDescriptor) -> None:
        """watchdog's, tolerating a watch already forgotten: during a storm
        the same path is watched, dropped and watched again faster than its
        bookkeeping follows, and a KeyError here left the observer (and its
        inotify thread) half stopped."""
        path = self._active_callbacks_by_watch.pop(wd, None)
        if path is None:
            return
        wd2 = self._active_callbacks_by_path.pop(path, None)
        if wd2 is not None and wd2 != wd:  # the path belongs to a newer watch
            self._active_callbacks_by_path[path] = wd2


class _Emitter(InotifyEmitter):
    def __init__(self, *args: Any, on_overflow: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_overflow = on_overflow

    def on_thread_start(self) -> None:
        self._inotify = _WatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink,
            on_overflow=self._on_overflow,
        )


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
        self._events = EventMapper(self._root, syncset)
        self._loop = loop
        self._on_change = on_change
        self._on_lost = on_lost
        self._observer: _Observer | None = None
        # handed over to the loop in one call (observer thread -> loop)
        self._lock = threading.Lock()
        self._queued: list[Change] = []
        self._lost: list[str] = []
        self._drain_scheduled = False

    # -- set-up ------------------------------------------------------------

    def start(self) -> None:
        observer = self._new_observer()
        self._observer = observer
        observer.start()  # first: a watch that cannot be set up is then reported, per path
        self._schedule(observer)

    def stop(self) -> None:
        observer, self._observer = self._observer, None  # its overflows are ours no more
        if observer is not None:
            observer.stop()
            observer.join()

    def refresh(self) -> None:
        """Re-create the watches, in a new inotify instance (before a
        reconcile's scan: a tree may have appeared, and after an overflow
        the old watches may name moved directories)."""
        self.stop()
        self.start()

    def _new_observer(self) -> _Observer:
        def overflowed() -> None:
            if observer is self._observer:  # not one stopped or being replaced
                self._push([], lost="inotify queue overflow")

        observer = _Observer(on_overflow=overflowed)
        return observer

    def _schedule(self, observer: _Observer) -> None:
        wanted: dict[bytes, bool] = {}
        for top in self._syncset.tops:
            full = self._root + top if top else self._root
            if os.path.isdir(full) and not os.path.islink(full):
                wanted[full] = True
            else:
                wanted.setdefault(os.path.dirname(full.rstrip(b"/")), False)
        watched = 0
        for path, recursive in sorted(wanted.items()):
            if not os.path.isdir(path):
                log.warning("watch_skipped", path=os.fsdecode(path), reason="no such directory")
                continue
            try:
                observer.schedule(self, os.fsdecode(path), recursive=recursive, event_filter=EVENTS)
            except OSError as exc:
                log.error(
                    "watch_failed",
                    path=os.fsdecode(path),
                    error=str(exc),
                    hint="raise fs.inotify.max_user_watches (sysctl) if this says ENOSPC",
                )
                self._push([], lost=f"cannot watch {os.fsdecode(path)}: {exc}")
                continue
            watched += 1
        log.info("watching", directories=watched)

    # -- events (observer thread) -----------------------------------------

    def _push(self, changes: list[Change], lost: str | None = None) -> None:
        """Queue for the loop; wake it only if no drain is scheduled yet."""
        with self._lock:
            if lost is not None and lost not in self._lost:
                self._lost.append(lost)
            if self._lost:
                self._queued.clear()  # the reconcile to come covers them
            else:
                self._queued.extend(changes)
                if len(self._queued) > MAX_QUEUED:
                    self._queued.clear()
                    self._lost.append(f"more than {MAX_QUEUED} changes waiting for the daemon")
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        """On the loop: everything queued since the last drain, in one go."""
        with self._lock:
            changes, self._queued = self._queued, []
            lost, self._lost = self._lost, []
            self._drain_scheduled = False
        for reason in lost:
            self._on_lost(reason)
        if changes:
            self._on_change(changes)

    def dispatch(self, event: FileSystemEvent) -> None:
        meaning = self._events.meaning(event)
        if meaning.lost is not None:
            self._push([], lost=meaning.lost)
        if meaning.changes:
            self._push(meaning.changes)
