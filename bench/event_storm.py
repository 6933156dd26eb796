"""An inotify event storm against a real daemon: does it still answer?

Two nodes on one host, as in the integration tests (a private sshd on
127.0.0.1 whose forced command runs the passive node's agent). Once ``bmsync
run`` on the active node says "syncing", a separate process swaps a
directory and a symlink inside the synced tree as fast as it can
(``mkdir d; rmdir d; ln -s /tmp d; rm d``, issue 11 item 14). While it
runs, the daemon's control socket is asked for its status every
``--poll-interval`` seconds for ``--poll-s`` seconds; then SIGTERM is sent,
the storm still running, and the time until the process exits is measured.

    python3 bench/event_storm.py [--poll-s 10] [--json bench/results/event_storm.json]

Printed and written: the longest status response time, the number of
status calls (and of failed ones: no answer within ``--status-timeout``),
the storm's swap count, and the SIGTERM-to-exit time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import bmsync  # noqa: E402
from bench.tools import BmsyncDaemon, Link, log_tail  # noqa: E402
from bmsync.core.errors import BmsyncError  # noqa: E402
from bmsync.service import control  # noqa: E402

# The storm, in its own process (no GIL shared with the status polls): it
# swaps until killed and prints how many swaps it made.
STORM = """
import os, signal, sys
d = sys.argv[1]
n = 0
stop = False
def done(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, done)
while not stop:
    os.mkdir(d); os.rmdir(d); os.symlink("/tmp", d); os.unlink(d)
    n += 1
print(n)
"""


def timed_status(sock: Path, timeout_s: float) -> tuple[float, bool]:
    t0 = time.perf_counter()
    try:
        answer = asyncio.run(control.request(sock, "status", timeout_s))
        ok = isinstance(answer, dict) and "state" in answer
    except (BmsyncError, OSError):
        ok = False
    return time.perf_counter() - t0, ok


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    link = Link.create(work / "sshd")
    src, dst = work / "src", work / "dst"
    (src / "etc").mkdir(parents=True)
    dst.mkdir()
    for d in range(args.dirs):
        sub = src / "etc" / f"d{d // 100}" / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(args.files_per_dir):
            (sub / f"file{i}").write_text(f"content {d} {i}\n")
    daemon = BmsyncDaemon("bmsync", link, src, dst, work / "bmsync")
    link.sshd.start()
    storms: list[subprocess.Popen[str]] = []
    try:
        daemon.start()
        daemon.wait_syncing(60)
        sock = daemon.work / "bm1.sock"
        storms = [
            subprocess.Popen(
                [sys.executable, "-c", STORM, str(src / "etc" / f"storm{i}")],
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(args.storms)
        ]
        times: list[float] = []
        failed = 0
        end = time.monotonic() + args.poll_s
        while time.monotonic() < end:
            took, ok = timed_status(sock, args.status_timeout)
            times.append(took)
            failed += not ok
            time.sleep(args.poll_interval)
        assert daemon.process is not None
        t0 = time.perf_counter()
        daemon.process.send_signal(signal.SIGTERM)
        try:
            code: int | None = daemon.process.wait(args.term_timeout)
        except subprocess.TimeoutExpired:
            code = None
        term_s = time.perf_counter() - t0
        swaps = 0
        for storm in storms:
            storm.send_signal(signal.SIGTERM)
            swaps += int((storm.communicate(timeout=30)[0] or "0").strip())
        storms = []
        if code is None:
            print(f"no exit within {args.term_timeout:g} s; log:\n{log_tail(daemon.log)}")
        events: dict[str, int] = {}
        for _, event, _fields in daemon.log_events(0):
            events[event] = events.get(event, 0) + 1
        return {
            "log_events": {
                k: v
                for k, v in sorted(events.items())
                if k in ("events_lost", "reconciled", "batch_applied", "watching", "queue_full")
            },
            "status_calls": len(times),
            "status_failed": failed,
            "status_max_s": round(max(times), 3),
            "status_median_s": round(sorted(times)[len(times) // 2], 4),
            "sigterm_to_exit_s": round(term_s, 3) if code is not None else None,
            "exit_code": code,
            "storm_swaps": swaps,
            "storm_s": round(args.poll_s + term_s, 1),
        }
    finally:
        for storm in storms:
            storm.kill()
            storm.wait()
        daemon.stop()
        link.sshd.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--poll-s", type=float, default=10.0, help="status polled this long")
    parser.add_argument("--poll-interval", type=float, default=0.1)
    parser.add_argument("--status-timeout", type=float, default=120.0)
    parser.add_argument("--term-timeout", type=float, default=120.0)
    parser.add_argument("--storms", type=int, default=2, help="storm processes")
    parser.add_argument("--dirs", type=int, default=2000, help="directories in the tree")
    parser.add_argument("--files-per-dir", type=int, default=5)
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/event_storm.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bmsync-storm-") as tmp:
        results = run(args, Path(tmp))
    for key, value in results.items():
        print(f"{key:20} {value}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "bmsync": bmsync.__version__,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "args": {k: str(v) for k, v in vars(args).items()},
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
