"""The watcher's hand-over to the loop under an event storm, without inotify:
events dispatched from a thread, as watchdog's observer does, while the loop
is busy (a long scan on it, say).

Each ``call_soon_threadsafe`` writes a byte to the loop's self-pipe, which
also carries signals: with one call per event the pipe filled while the
loop was busy, and a SIGTERM arriving then was lost (issue 11 item 14)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from watchdog.events import FileCreatedEvent

from bmsync.core.excludes import SyncSet
from bmsync.sender import watch
from bmsync.sender.events import Change
from bmsync.sender.watch import Watcher

EVENTS = 50_000


def test_a_storm_while_the_loop_is_busy_loses_no_signal(tmp_path: Path) -> None:
    got: list[list[Change]] = []
    lost: list[str] = []
    signalled: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: signalled.append(1))
        try:
            watcher = Watcher(tmp_path, SyncSet(tops=(b"",)), loop, got.append, lost.append)
            root = str(tmp_path)
            storm = threading.Thread(
                target=lambda: [
                    watcher.dispatch(FileCreatedEvent(f"{root}/f{i % 100}")) for i in range(EVENTS)
                ]
            )
            storm.start()
            storm.join()  # the loop is "busy" meanwhile: it runs nothing
            os.kill(os.getpid(), signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while not signalled and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)

    asyncio.run(main())
    assert signalled, "the signal was lost"
    assert len(got) == 1, "one hand-over for the whole storm"
    assert len(got[0]) == EVENTS
    assert got[0][0] == (b"f0", False, False, False)
    assert not lost


def test_changes_beyond_the_limit_are_reported_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "MAX_QUEUED", 10)
    got: list[list[Change]] = []
    lost: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        watcher = Watcher(tmp_path, SyncSet(tops=(b"",)), loop, got.append, lost.append)
        for i in range(11):
            watcher.dispatch(FileCreatedEvent(f"{tmp_path}/f{i}"))
        watcher.dispatch(FileCreatedEvent(f"{tmp_path}/late"))  # covered by the reconcile
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert got == []
    assert lost == ["more than 10 changes waiting for the daemon"]
