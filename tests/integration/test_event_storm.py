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
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.conftest import Pair
from tests.integration.daemon_helpers import RunningDaemon, converge

STORMS = 3  # processes, each swapping its own directory
STORM_S = 20.0  # each storm ends by itself after this
POLL_S = 8.0  # status polled this long during the storm, then SIGTERM

# In its own process (the test's status calls share no GIL with it); it
# prints how many swaps it made.
STORM = """
import os, signal, sys, time
d, end = sys.argv[1], time.monotonic() + float(sys.argv[2])
n, stop = 0, []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
while not stop and time.monotonic() < end:
    os.mkdir(d); os.rmdir(d); os.symlink("/tmp", d); os.unlink(d)
    n += 1
print(n)
"""


def make_tree(root: Path) -> None:
    """Enough directories that a reconcile's scan and the watches' refresh
    take a while (an overflow during the storm starts both)."""
    for d in range(3000):
        sub = root / "etc" / f"d{d // 100}" / f"d{d}"
        sub.mkdir(parents=True)
        (sub / "f").write_text(f"{d}\n")


def test_status_answers_and_sigterm_ends_the_daemon_during_a_storm(pair: Pair) -> None:
    make_tree(pair.active)
    daemon = RunningDaemon(pair)
    storms: list[subprocess.Popen[str]] = []
    try:
        daemon.wait_state("syncing")
        storms = [
            subprocess.Popen(
                [sys.executable, "-c", STORM, str(pair.active / "etc" / f"storm{i}"), str(STORM_S)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(STORMS)
        ]
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
        assert any(s.poll() is None for s in storms), "the storm ended before SIGTERM"
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(30) == 0, daemon.log()
    finally:
        for each in storms:
            each.send_signal(signal.SIGTERM)
        swaps = [int(each.communicate(timeout=60)[0] or 0) for each in storms]
        daemon.stop()
    assert sum(swaps) > 0
    assert "stop_requested" in daemon.log_path.read_text(errors="replace")

    # the storm is over: a new daemon brings the peer in line
    for i in range(STORMS):
        assert not os.path.lexists(pair.active / "etc" / f"storm{i}")
    again = RunningDaemon(pair)
    try:
        again.wait_state("syncing")
        converge(pair, timeout_s=30)
    finally:
        assert again.stop() == 0
