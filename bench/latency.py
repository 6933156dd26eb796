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
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import bmsync  # noqa: E402
from tests.sshd import Sshd, write_config  # noqa: E402

POLL_S = 0.0002  # sleep between two looks at the passive tree
GAP_S = 0.1  # between two changes, so that each one is a batch of its own
SAMPLE_TIMEOUT_S = 10.0  # one change not seen on the passive within this: give up
SYNCING_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SIZES = (100, 3000)  # bytes, per written file


class BenchError(Exception):
    pass


@dataclass
class Nodes:
    base: Path
    sshd: Sshd
    active: Path  # the active node's root
    passive: Path  # the passive node's root
    active_conf: Path
    passive_conf: Path
    daemon_log: Path
    daemon: subprocess.Popen[bytes] | None = None


@dataclass
class Results:
    samples: dict[str, list[float]] = field(default_factory=dict)  # kind -> ms, in order
    last_batch: dict[str, Any] = field(default_factory=dict)  # kind -> status last_batch
    # kind -> what the daemon's counters (batches, files_sent, bytes_sent) grew by
    daemon_delta: dict[str, dict[str, int]] = field(default_factory=dict)


# -- setting up ------------------------------------------------------------------


def make_nodes(base: Path) -> Nodes:
    sshd = Sshd.create(base / "sshd")
    active = base / "bm1-root"
    passive = base / "bm2-root"
    active.mkdir()
    passive.mkdir()
    subprocess.run(["cp", "-a", "/etc", str(active / "etc")], check=True)
    active_conf = write_config(base / "bm1.yaml", "bm1", active, base / "state1", sshd)
    passive_conf = write_config(base / "bm2.yaml", "bm2", passive, base / "state2")
    sshd.authorize(passive_conf)
    return Nodes(base, sshd, active, passive, active_conf, passive_conf, base / "daemon.log")


def bmsync_cmd(conf: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "bmsync", "-c", str(conf), *args]


def start_daemon(nodes: Nodes, log_level: str) -> None:
    with open(nodes.daemon_log, "ab") as log:
        nodes.daemon = subprocess.Popen(
            bmsync_cmd(nodes.active_conf, "--log-level", log_level, "run"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )


def status(nodes: Nodes) -> dict[str, Any] | None:
    """The daemon's ``status --json``; ``None`` if it does not answer."""
    done = subprocess.run(
        bmsync_cmd(nodes.active_conf, "status", "--json"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    try:
        answer: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        return None
    return answer


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def wait_syncing(nodes: Nodes, timeout_s: float) -> float:
    """Seconds until the daemon says "syncing" (its initial reconcile done)."""
    assert nodes.daemon is not None
    started = time.monotonic()
    deadline = started + timeout_s
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        code = nodes.daemon.poll()
        if code is not None:
            raise BenchError(
                f"the daemon exited with {code} before it reached 'syncing'; "
                f"its log ({nodes.daemon_log}):\n{log_tail(nodes.daemon_log)}"
            )
        last = status(nodes)
        if last is not None and last.get("state") == "syncing":
            return time.monotonic() - started
        time.sleep(0.25)
    state = "no answer" if last is None else f"state {last.get('state')!r}"
    errors = "" if last is None else json.dumps(last.get("errors", []), indent=2)
    raise BenchError(
        f"the daemon did not reach 'syncing' within {timeout_s:g} s ({state}) {errors}\n"
        f"its log ({nodes.daemon_log}):\n{log_tail(nodes.daemon_log)}"
    )


def stop_daemon(nodes: Nodes) -> int | None:
    """SIGTERM the daemon (by its pid) and wait; its exit code."""
    proc = nodes.daemon
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"the daemon (pid {proc.pid}) ignored SIGTERM; killing it", file=sys.stderr)
            proc.kill()
            proc.wait()
    nodes.daemon = None
    return proc.returncode


# -- measuring -------------------------------------------------------------------


def read_or_none(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def has(path: Path, data: bytes) -> Callable[[], bool]:
    return lambda: read_or_none(path) == data


def gone(path: Path) -> Callable[[], bool]:
    return lambda: not os.path.lexists(path)


def moved(old: Path, new: Path, data: bytes) -> Callable[[], bool]:
    return lambda: read_or_none(new) == data and not os.path.lexists(old)


def wait_until(done: Callable[[], bool], what: str, nodes: Nodes) -> float:
    """Poll ``done`` until it holds; the perf_counter() time it first did."""
    deadline = time.perf_counter() + SAMPLE_TIMEOUT_S
    while True:
        if done():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            alive = nodes.daemon is not None and nodes.daemon.poll() is None
            raise BenchError(
                f"{what}: not on the passive after {SAMPLE_TIMEOUT_S:g} s "
                f"(daemon {'running' if alive else 'gone'}); its log:\n"
                f"{log_tail(nodes.daemon_log)}"
            )
        time.sleep(POLL_S)


def content(k: int, size: int) -> bytes:
    head = f"# bmsync bench file {k} {uuid.uuid4()}\n".encode()
    body = b"key = value\n" * size
    return (head + body)[: size - 1] + b"\n"


def write_file(path: Path, data: bytes) -> float:
    with open(path, "wb") as f:
        f.write(data)
    return time.perf_counter()


def measure_writes(
    nodes: Nodes, n: int, rng: random.Random
) -> tuple[list[float], dict[str, bytes]]:
    """``n`` new files, one at a time; the ms each took, and what was written."""
    samples: list[float] = []
    written: dict[str, bytes] = {}
    for k in range(n):
        name = f"file{k}.conf"
        data = content(k, rng.randint(*SIZES))
        t0 = write_file(nodes.active / "etc/bench" / name, data)
        there = nodes.passive / "etc/bench" / name
        t1 = wait_until(has(there, data), name, nodes)
        samples.append((t1 - t0) * 1000)
        written[name] = data
        time.sleep(GAP_S)
    return samples, written


def measure_renames(
    nodes: Nodes, written: dict[str, bytes], n: int
) -> tuple[list[float], dict[str, bytes]]:
    """Rename ``n`` synced files; the ms each took, their new names and contents."""
    samples: list[float] = []
    renamed: dict[str, bytes] = {}
    for k, (name, data) in enumerate(list(written.items())[:n]):
        new = f"renamed{k}.conf"
        os.rename(nodes.active / "etc/bench" / name, nodes.active / "etc/bench" / new)
        t0 = time.perf_counter()
        old_there = nodes.passive / "etc/bench" / name
        new_there = nodes.passive / "etc/bench" / new

        t1 = wait_until(moved(old_there, new_there, data), f"rename {name} -> {new}", nodes)
        samples.append((t1 - t0) * 1000)
        renamed[new] = data
        time.sleep(GAP_S)
    return samples, renamed


def measure_deletes(nodes: Nodes, names: list[str]) -> list[float]:
    samples: list[float] = []
    for name in names:
        os.unlink(nodes.active / "etc/bench" / name)
        t0 = time.perf_counter()
        there = nodes.passive / "etc/bench" / name
        t1 = wait_until(gone(there), f"delete {name}", nodes)
        samples.append((t1 - t0) * 1000)
        time.sleep(GAP_S)
    return samples


def run_bench(nodes: Nodes, changes: int, moves: int, seed: int) -> Results:
    rng = random.Random(seed)
    bench_dir = nodes.active / "etc/bench"
    bench_dir.mkdir()
    wait_until((nodes.passive / "etc/bench").is_dir, "mkdir etc/bench", nodes)
    time.sleep(GAP_S)
    results = Results()
    before = status(nodes) or {}

    def phase_done(kind: str) -> None:
        nonlocal before
        now = status(nodes) or {}
        results.last_batch[kind] = now.get("last_batch")
        results.daemon_delta[kind] = {
            k: int(now.get(k, 0)) - int(before.get(k, 0))
            for k in ("batches", "files_sent", "bytes_sent")
        }
        before = now

    results.samples["write"], written = measure_writes(nodes, changes, rng)
    phase_done("write")
    if moves:
        results.samples["rename"], renamed = measure_renames(nodes, written, moves)
        phase_done("rename")
        results.samples["delete"] = measure_deletes(nodes, list(renamed))
        phase_done("delete")
    return results


# -- reporting -------------------------------------------------------------------


def nearest_rank(sorted_ms: list[float], p: float) -> float:
    rank = max(1, math.ceil(p / 100 * len(sorted_ms)))
    return sorted_ms[rank - 1]


def summarize(samples: list[float]) -> dict[str, float | int]:
    s = sorted(samples)
    return {
        "n": len(s),
        "p50_ms": round(nearest_rank(s, 50), 3),
        "p95_ms": round(nearest_rank(s, 95), 3),
        "max_ms": round(s[-1], 3),
        "min_ms": round(s[0], 3),
    }


def report(
    results: Results, summary: dict[str, dict[str, float | int]], final: dict[str, Any] | None
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
    nodes: Nodes | None = None
    final: dict[str, Any] | None = None
    results = Results()
    code = 0
    try:
        nodes = make_nodes(base)
        nodes.sshd.start()
        start_daemon(nodes, args.log_level)
        took = wait_syncing(nodes, SYNCING_TIMEOUT_S)
        print(f"daemon syncing after {took:.1f} s (initial reconcile of a copy of /etc)")
        results = run_bench(nodes, args.changes, args.moves, args.seed)
        final = status(nodes)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        if nodes is not None:
            daemon_code = stop_daemon(nodes)
            if daemon_code not in (None, 0):
                print(f"the daemon exited with {daemon_code} on SIGTERM", file=sys.stderr)
                code = code or 1
            nodes.sshd.stop()
        if args.keep:
            print(f"kept {base} (daemon log: {base / 'daemon.log'})")
        else:
            shutil.rmtree(base, ignore_errors=True)
    if code:
        return code

    summary = {kind: summarize(s) for kind, s in results.samples.items() if s}
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
            "sizes_bytes": list(SIZES),
            "poll_s": POLL_S,
            "gap_s": GAP_S,
            "log_level": args.log_level,
            "percentiles": "nearest-rank",
        },
        "summary": summary,
        "samples_ms": {k: [round(v, 3) for v in s] for k, s in results.samples.items()},
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
