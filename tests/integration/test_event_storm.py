"""An inotify event storm (issue 11 item 14): a directory and a symlink
swapped in place as fast as possible inside the synced tree. The daemon
keeps answering `bmsync status`, ends on SIGTERM, and a restarted daemon
converges once the storm is over.

Before the fix each event was one ``call_soon_threadsafe``, one byte in the
loop's self-pipe: the storm filled it, and SIGTERM, which travels through
the same pipe, was lost (the daemon went on for minutes); a reconcile's
second scan ran on the loop and held `status` up meanwhile."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from tests.integration.conftest import Pair
from tests.integration.daemon_helpers import RunningDaemon, converge

SWAPS = 20_000  # per storm thread, at most
STORM_S = 10.0  # at most
POLL_S = 5.0  # status polled this long during the storm, then SIGTERM


def storm(where: Path, stop: threading.Event, swaps: list[int]) -> None:
    d = str(where)
    deadline = time.monotonic() + STORM_S
    n = 0
    while n < SWAPS and not stop.is_set() and time.monotonic() < deadline:
        os.mkdir(d)
        os.rmdir(d)
        os.symlink("/tmp", d)
        os.unlink(d)
        n += 1
    swaps.append(n)


def make_tree(root: Path) -> None:
    for d in range(400):
        sub = root / "etc" / f"d{d // 40}" / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(3):
            (sub / f"f{i}").write_text(f"{d} {i}\n")


def test_status_answers_and_sigterm_ends_the_daemon_during_a_storm(pair: Pair) -> None:
    make_tree(pair.active)
    daemon = RunningDaemon(pair)
    stop = threading.Event()
    swaps: list[int] = []
    threads = [
        threading.Thread(target=storm, args=(pair.active / "etc" / f"storm{i}", stop, swaps))
        for i in range(2)
    ]
    try:
        daemon.wait_state("syncing")
        for thread in threads:
            thread.start()
        answers = 0
        end = time.monotonic() + POLL_S
        while time.monotonic() < end:
            # the CLI's control client gives up after 10 s: each call answered
            done = pair.bmsync("status", "--json")
            assert done.returncode == 0, done.stdout + done.stderr + daemon.log()
            assert json.loads(done.stdout)["state"], done.stdout
            answers += 1
            time.sleep(0.05)
        assert answers > 0
        alive = [t for t in threads if t.is_alive()]
        assert alive, "the storm ended before SIGTERM; make it longer"
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(30) == 0, daemon.log()
    finally:
        stop.set()
        for thread in threads:
            if thread.is_alive() or thread.ident is not None:
                thread.join()
        daemon.stop()
    assert sum(swaps) > 0
    assert "stop_requested" in daemon.log_path.read_text(errors="replace")

    # the storm is over: a new daemon brings the peer in line
    for i in range(2):
        assert not os.path.lexists(pair.active / "etc" / f"storm{i}")
    again = RunningDaemon(pair)
    try:
        again.wait_state("syncing")
        converge(pair, timeout_s=30)
    finally:
        assert again.stop() == 0
