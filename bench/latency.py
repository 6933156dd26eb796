"""Propagation latency of the real-time daemon, end to end, on this machine.

Two nodes on one host, as in the integration tests: a private OpenSSH sshd on
127.0.0.1 (tests/sshd.py) whose forced command runs the passive node's agent,
the active node's tree a copy of this machine's /etc, the passive one empty.
``bmsync run`` is started on the active node; once it says "syncing", small
changes are made under <active>/etc/bench/ one at a time, and the time from
the change (right after close/rename/unlink) until the passive copy shows it
is measured by polling the passive tree.

    python3 bench/latency.py [--changes 30] [--json bench/results/latency.json]

Percentiles are nearest-rank on the sorted samples.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import bmsync  # noqa: E402
from bench.tools import BmsyncDaemon, Link, ToolError, log_tail  # noqa: E402
from bench.workloads import (  # noqa: E402
    POLL_S,
    SMALL_SIZES,
    BenchError,
    gone,
    has,
    make_source,
    moved,
    small_content,
    summarize_ms,
    wait_for,
    write_file,
)

GAP_S = 0.1  # between two changes, so that each one is a batch of its own
SAMPLE_TIMEOUT_S = 10.0  # one change not seen on the passive within this: give up
SYNCING_TIMEOUT_S = 60.0
BENCH_DIR = "etc/bench"


@dataclass
class Results:
    samples: dict[str, list[float]] = field(default_factory=dict)  # kind -> ms, in order
    last_batch: dict[str, Any] = field(default_factory=dict)  # kind -> status last_batch
    # kind -> what the daemon's counters (batches, files_sent, bytes_sent) grew by
    daemon_delta: dict[str, dict[str, int]] = field(default_factory=dict)


def wait_until(done: Callable[[], bool], what: str, daemon: BmsyncDaemon) -> float:
    """The perf_counter() time ``done`` first held."""
    t = wait_for(done, SAMPLE_TIMEOUT_S, daemon, POLL_S)
    if t is None:
        raise BenchError(
            f"{what}: not on the passive after {SAMPLE_TIMEOUT_S:g} s; the daemon's log:\n"
            f"{log_tail(daemon.log)}"
        )
    return t


def measure_writes(
    daemon: BmsyncDaemon, n: int, rng: random.Random
) -> tuple[list[float], dict[str, bytes]]:
    """``n`` new files, one at a time; the ms each took, and what was written."""
    samples: list[float] = []
    written: dict[str, bytes] = {}
    for k in range(n):
        name = f"file{k}.conf"
        data = small_content(f"file {k}", rng.randint(*SMALL_SIZES))
        t0 = write_file(daemon.src / BENCH_DIR / name, data)
        there = daemon.dst / BENCH_DIR / name
        t1 = wait_until(has(there, data), name, daemon)
        samples.append((t1 - t0) * 1000)
        written[name] = data
        time.sleep(GAP_S)
    return samples, written


def measure_renames(
    daemon: BmsyncDaemon, written: dict[str, bytes], n: int
) -> tuple[list[float], dict[str, bytes]]:
    """Rename ``n`` synced files; the ms each took, their new names and contents."""
    samples: list[float] = []
    renamed: dict[str, bytes] = {}
    for k, (name, data) in enumerate(list(written.items())[:n]):
        new = f"renamed{k}.conf"
        os.rename(daemon.src / BENCH_DIR / name, daemon.src / BENCH_DIR / new)
        t0 = time.perf_counter()
        old_there = daemon.dst / BENCH_DIR / name
        new_there = daemon.dst / BENCH_DIR / new
        t1 = wait_until(moved(old_there, new_there, data), f"rename {name} -> {new}", daemon)
        samples.append((t1 - t0) * 1000)
        renamed[new] = data
        time.sleep(GAP_S)
    return samples, renamed


def measure_deletes(daemon: BmsyncDaemon, names: list[str]) -> list[float]:
    samples: list[float] = []
    for name in names:
        os.unlink(daemon.src / BENCH_DIR / name)
        t0 = time.perf_counter()
        there = daemon.dst / BENCH_DIR / name
        t1 = wait_until(gone(there), f"delete {name}", daemon)
        samples.append((t1 - t0) * 1000)
        time.sleep(GAP_S)
    return samples


def run_bench(daemon: BmsyncDaemon, changes: int, moves: int, seed: int) -> Results:
    rng = random.Random(seed)
    (daemon.src / BENCH_DIR).mkdir()
    wait_until((daemon.dst / BENCH_DIR).is_dir, f"mkdir {BENCH_DIR}", daemon)
    time.sleep(GAP_S)
    results = Results()
    before = daemon.status() or {}

    def phase_done(kind: str) -> None:
        nonlocal before
        now = daemon.status() or {}
        results.last_batch[kind] = now.get("last_batch")
        results.daemon_delta[kind] = {
            k: int(now.get(k, 0)) - int(before.get(k, 0))
            for k in ("batches", "files_sent", "bytes_sent")
        }
        before = now

    results.samples["write"], written = measure_writes(daemon, changes, rng)
    phase_done("write")
    if moves:
        results.samples["rename"], renamed = measure_renames(daemon, written, moves)
        phase_done("rename")
        results.samples["delete"] = measure_deletes(daemon, list(renamed))
        phase_done("delete")
    return results


# -- reporting -------------------------------------------------------------------


def report(
    results: Results, summary: dict[str, dict[str, Any]], final: dict[str, Any] | None
) -> None:
    print(f"{'change':<8} {'n':>3} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}")
    for kind, row in summary.items():
        print(
            f"{kind:<8} {row['n']:>3} {row['p50_ms']:>9.2f} {row['p95_ms']:>9.2f} "
            f"{row['max_ms']:>9.2f}"
        )
    print()
    for kind, delta in results.daemon_delta.items():
        print(
            f"daemon during {kind + 's':<8} {delta['batches']:>3} batches, "
            f"{delta['files_sent']:>3} files sent, {delta['bytes_sent']:>6} bytes"
        )
    for kind, batch in results.last_batch.items():
        print(f"daemon last_batch after {kind + 's':<8} {json.dumps(batch)}")
    if final is not None:
        print(
            f"daemon: state {final.get('state')}, {final.get('batches')} batches, "
            f"{final.get('files_sent')} files, {final.get('error_count')} errors"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=30, help="file writes to time (30)")
    parser.add_argument(
        "--moves",
        type=int,
        default=10,
        help="renames and deletes to time, each (10; at most --changes; 20 or more "
        "deletions within 60 s may trip the delete-storm brake)",
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/latency.json")
    parser.add_argument("--seed", type=int, default=1, help="file sizes (random, 100..3000 B)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, trees)")
    args = parser.parse_args(argv)
    if args.changes < 1 or not 0 <= args.moves <= args.changes:
        parser.error("need --changes >= 1 and 0 <= --moves <= --changes")

    base = Path(tempfile.mkdtemp(prefix="bmsync-bench-"))
    link: Link | None = None
    daemon: BmsyncDaemon | None = None
    final: dict[str, Any] | None = None
    results = Results()
    code = 0
    try:
        link = Link.create(base / "sshd")
        link.sshd.start()
        make_source(base / "bm1-root")  # a copy of /etc
        (base / "bm2-root").mkdir()
        daemon = BmsyncDaemon(
            "bmsync", link, base / "bm1-root", base / "bm2-root", base, args.log_level
        )
        daemon.start()
        took = daemon.wait_syncing(SYNCING_TIMEOUT_S)
        print(f"daemon syncing after {took:.1f} s (initial reconcile of a copy of /etc)")
        results = run_bench(daemon, args.changes, args.moves, args.seed)
        final = daemon.status()
    except (BenchError, ToolError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        if daemon is not None:
            daemon_code = daemon.stop()
            if daemon_code not in (None, 0):
                print(f"the daemon exited with {daemon_code} on SIGTERM", file=sys.stderr)
                code = code or 1
        if link is not None:
            link.sshd.stop()
        if args.keep:
            print(f"kept {base} (daemon log: {base / 'daemon.log'})")
        else:
            shutil.rmtree(base, ignore_errors=True)
    if code:
        return code

    summary = {kind: summarize_ms(s) for kind, s in results.samples.items() if s}
    report(results, summary, final)
    out = {
        "bmsync_version": bmsync.__version__,
        "python": platform.python_version(),
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "changes": args.changes,
            "moves": args.moves,
            "seed": args.seed,
            "sizes_bytes": list(SMALL_SIZES),
            "poll_s": POLL_S,
            "gap_s": GAP_S,
            "log_level": args.log_level,
            "percentiles": "nearest-rank",
        },
        "summary": summary,
        "daemon_last_batch": results.last_batch,
        "daemon_delta": results.daemon_delta,
        "daemon_status": final,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
