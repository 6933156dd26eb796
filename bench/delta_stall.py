"""Does a large delta block the daemon? Issue 11 item 13's workload.

A 60 MB file of two-byte lines is synced whole (and kept as a delta base),
then its first and last lines are changed in place. While the daemon sends
that change, a thread asks its control socket for ``status`` back to back;
reported: the longest status answer during the batch, the daemon's peak
resident memory over the batch (VmHWM of its pid, reset just before the
change through /proc/PID/clear_refs), and the time from the change until
the passive has the new file.

    python3 bench/delta_stall.py [--lines 30000000] [--json bench/results/delta_stall.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import proc  # noqa: E402
from bench.tools import BmsyncDaemon, Link, ToolError  # noqa: E402
from tests.helpers import change_both_ends, two_byte_lines  # noqa: E402

STATUS_TIMEOUT_S = 60.0  # long enough to measure a stall, not to hide it


def ends_changed(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(-2, os.SEEK_END)
            return head == b"#\n" and f.read(2) == b"$\n"
    except OSError:
        return False


def wait(check: Any, timeout_s: float, what: str, daemon: BmsyncDaemon) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        daemon.check()
        if time.monotonic() > deadline:
            raise ToolError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run(base: Path, lines: int) -> dict[str, Any]:
    link = Link.create(base / "sshd")
    link.sshd.start()
    src, dst = base / "bm1-root", base / "bm2-root"
    src.mkdir()
    dst.mkdir()
    big = src / "big.txt"
    big.write_bytes(two_byte_lines(lines, seed=13))
    daemon = BmsyncDaemon("bmsync", link, src, dst, base)
    try:
        daemon.start()
        daemon.wait_syncing(300)
        bases = base / "state1" / "bases"
        wait(
            lambda: bases.is_dir() and any(len(p.name) == 32 for p in bases.iterdir()),
            300,
            "the delta base kept",
            daemon,
        )
        daemon.settle()
        before = daemon.status() or {}
        hwm_start_kib = proc.status_kib(daemon.pid, "VmHWM")
        Path(f"/proc/{daemon.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        times: list[float] = []
        failed = 0
        done = threading.Event()

        def poll() -> None:
            nonlocal failed
            while not done.is_set():
                t0 = time.perf_counter()
                answer = daemon.status(STATUS_TIMEOUT_S)
                times.append(time.perf_counter() - t0)
                failed += answer is None

        poller = threading.Thread(target=poll)
        t0 = time.perf_counter()
        change_both_ends(big)
        poller.start()
        there = dst / "big.txt"
        wait(lambda: ends_changed(there), 600, "the new file on the passive", daemon)
        arrived_s = time.perf_counter() - t0
        done.set()
        poller.join()
        peak_kib = proc.status_kib(daemon.pid, "VmHWM")
        daemon.settle()
        after = daemon.status() or {}
        identical = there.read_bytes() == big.read_bytes()
        return {
            "file_bytes": 2 * lines,
            "status_calls": len(times),
            "status_failed": failed,
            "status_max_ms": round(max(times) * 1000, 1) if times else None,
            "status_median_ms": round(sorted(times)[len(times) // 2] * 1000, 1) if times else None,
            "daemon_peak_rss_mib_batch": None if peak_kib is None else round(peak_kib / 1024, 1),
            "daemon_peak_rss_mib_before_change": (
                None if hwm_start_kib is None else round(hwm_start_kib / 1024, 1)
            ),
            "arrived_s": round(arrived_s, 2),
            "identical": identical,
            "last_batch": after.get("last_batch"),
            "batches": after.get("batches", 0) - before.get("batches", 0),
        }
    finally:
        daemon.stop()
        link.sshd.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=30_000_000, help="two-byte lines (30M)")
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/delta_stall.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bmsync-delta-stall-") as tmp:
        figures = run(Path(tmp), args.lines)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    result = {"commit": commit, "machine": platform.platform(), "cpus": os.cpu_count(), **figures}
    for key, value in result.items():
        print(f"{key:36} {value}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.json}")
    return 0 if figures["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
