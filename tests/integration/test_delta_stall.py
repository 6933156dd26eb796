"""Issue 11 item 13, "Deltas block the daemon": a 60 MB file of two-byte
lines changed at both ends travels as a delta made off the event loop, and
``bmsync status`` answers all the while."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tests.helpers import change_both_ends, two_byte_lines
from tests.integration.conftest import Pair
from tests.integration.daemon_helpers import RunningDaemon, wait_for

LINES = 30_000_000  # 60 MB


def ends(path: Path) -> bool:
    """Both changed lines are there (without reading 60 MB)."""
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(-2, os.SEEK_END)
        return head == b"#\n" and f.read(2) == b"$\n"


def test_a_60_mb_delta_of_two_byte_lines_leaves_status_answering(pair: Pair) -> None:
    big = pair.active / "big.txt"
    big.write_bytes(two_byte_lines(LINES, seed=13))
    bases = pair.base / "state1" / "bases"
    daemon = RunningDaemon(pair)
    try:
        daemon.wait_state("syncing", timeout_s=180)
        # the first copy went whole; the daemon keeps it as the next delta's base
        wait_for(
            lambda: bases.is_dir() and any(len(p.name) == 32 for p in bases.iterdir()),
            180,
            "the delta base kept",
        )
        before = daemon.status()
        new = change_both_ends(big)
        there = pair.passive / "big.txt"
        answers: list[dict[str, Any]] = []
        deadline = time.monotonic() + 300
        while True:
            # each call waits at most the CLI's own control timeout (10 s)
            status = daemon.status()
            answers.append(status)
            assert status["exit_code"] == 0, status
            if status["batches"] > before["batches"] and status["queued"] == 0 and ends(there):
                break
            assert time.monotonic() < deadline, f"{status}\n{daemon.log()}"
            assert daemon.process.poll() is None, daemon.log()
        assert there.read_bytes() == new
        last = answers[-1]["last_batch"]
        assert last["deltas"] == 1, last
        assert last["bytes"] < len(new) // 100, last  # a few chunks, not 60 MB
        assert all(a["state"] == "syncing" for a in answers)
    finally:
        assert daemon.stop() == 0, daemon.log()
