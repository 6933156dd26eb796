"""bmsync beside lsyncd and rsync, in one run, on this machine.

    python3 bench/compare.py [--runs 3] [--quick] [--json bench/results/compare.json]

As root (nftables, sshd, owners), with lsyncd, rsync, nftables and
openssh-server installed (``apt-get install -y lsyncd nftables rsync
openssh-server``). Everything lives in a temp dir under /tmp and is removed
at the end (``--keep`` keeps it); all traffic goes to a private sshd on
127.0.0.1 (tests/sshd.py: own host key, free high port).

The source tree is a copy of this machine's /etc plus etc/bench/: 500 small
files, one 20 MB text file and a few files to edit, rename and delete. Each
tool syncs it into its own empty target, one tool at a time, the bench files
recreated identically before each:

- ``bmsync``: ``bmsync run`` with the default settings (preset none, paths
  ["/"]), its agent behind a forced command on bmsync's own key;
- ``lsyncd0`` / ``lsyncd15``: lsyncd in ``default.rsyncssh`` mode, delay 0
  and the default delay (15 s; only three small changes and the same-size
  rewrite: it is slow by design), over a second, unrestricted key;
- ``rsync``: one-shot ``rsync -a --delete`` for the initial sync and the
  20 MB one-line change (that file alone, and the whole tree).

rsync and lsyncd run with ``-A -X --numeric-ids`` too, so that they copy
what bmsync copies (ACLs, xattrs, numeric owners). The source tree is
flushed (``sync``) before each tool starts: both trees share one filesystem
here, and bmsync's agent calls syncfs, which would otherwise also write out
the source the benchmark just created.

Figures, each run: initial sync (time, bytes on the wire); one small file
rewritten 30 times (close() to identical content on the target, p50/p95/max);
a same-size rewrite carrying the previous synced edit's mtime (propagated or
lost); 500 files rewritten at once (last close() to all identical); one line
changed in the 20 MB file (time, bytes on the wire; bmsync's own last_batch
bytes too); renames and deletes; 30 s idle (10 s with --quick): RSS of the
daemon's process tree and CPU % from /proc/PID/stat; and a tree of 100,000
small files (20,000 with --quick), in sync: bmsync's start-up reconcile with
a warm state dir, a ``bmsync resync`` no-change pass and the daemon's peak RSS
(VmHWM), beside an ``rsync -a --delete`` no-change pass.

Bytes on the wire: see bench/wire.py (nftables counters on the sshd port).
The table shows the median over the runs with min-max; ratios are computed
within each run, then summarised the same way. Percentiles are nearest-rank.
The targets are judged on the median over the runs (the same-size rewrite:
in every run). ``--quick`` makes one run unless ``--runs`` says otherwise.

bmsync's state is polled on its control socket (the answer ``bmsync status
--json`` prints, without starting a Python for each look); the daemon logs at
``info``, which gives where its start-up went (printed under the table).
The JSON holds every raw sample, per run, and the bmsync sources' digest
(a warning says so if they changed during the run).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import bmsync  # noqa: E402
from bench import proc, workloads  # noqa: E402
from bench.tools import (  # noqa: E402
    BmsyncDaemon,
    Daemon,
    Link,
    Lsyncd,
    ToolError,
    lsyncd_version,
    rsync_once,
    rsync_version,
)
from bench.wire import HOW as WIRE_HOW  # noqa: E402
from bench.wire import WireBytes, WireCounter  # noqa: E402
from bench.workloads import BenchError, Probe  # noqa: E402

SAMPLE_TIMEOUT_S = 10.0  # one change not on the target within this: failed
SAME_SIZE_WAIT_S = 5.0  # the same-size rewrite: lost if not there by then
SLOW_SAMPLE_TIMEOUT_S = 25.0  # lsyncd with its default delay (15 s)
SLOW_SAME_SIZE_WAIT_S = 20.0
START_TIMEOUT_S = 600.0  # initial sync / start-up reconcile
RSYNC_TIMEOUT_S = 900.0
SMALL_FILES = 500
BIG_MB = 20
MOVES = 5  # renames and deletes per run (well below bmsync's delete brake)
SLOW_CHANGES = 3  # small changes timed on lsyncd with its default delay
TOOLS = ("bmsync", "lsyncd0", "lsyncd15", "rsync")


@dataclass(frozen=True)
class Settings:
    runs: int
    quick: bool
    changes: int
    idle_s: float
    many_dirs: int
    per_dir: int
    seed: int
    json_path: Path
    keep: bool
    tools: tuple[str, ...]


@dataclass
class Bench:
    settings: Settings
    base: Path
    link: Link
    wire: WireCounter
    src: Path  # the active tree's root (SRC/etc)


# -- helpers ---------------------------------------------------------------------------


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def step(out: dict[str, Any], name: str, func: Callable[[], Any], daemon: Daemon | None) -> None:
    """Run one timed step; record its result, or its error and go on (unless
    the tool itself died: then the rest of its steps cannot run)."""
    print(f"  {name} ...", end=" ", flush=True)
    t0 = time.monotonic()
    try:
        out[name] = func()
        print(f"{time.monotonic() - t0:.1f} s")
        if daemon is not None:  # memory after each step: where RSS grows
            rss = mib(proc.tree_rss_kib(daemon.pid))
            out.setdefault("rss_mib_after_step", {})[name] = rss
    except (BenchError, ToolError, OSError, subprocess.SubprocessError) as exc:
        print(f"FAILED: {exc}")
        out.setdefault("errors", {})[name] = str(exc)
        if daemon is not None:
            daemon.check()  # raises if the daemon is gone


def wire_span(bench: Bench) -> Callable[[], WireBytes]:
    before = bench.wire.read()
    return lambda: bench.wire.read() - before


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


# -- the tools' phases ---------------------------------------------------------------------


def daemon_workloads(
    bench: Bench, out: dict[str, Any], daemon: Daemon, tree: workloads.BenchTree, run: int
) -> None:
    s = bench.settings
    probe = Probe(tree, daemon.dst, daemon, bench.wire, SAMPLE_TIMEOUT_S)
    rng = random.Random(s.seed * 1000 + run)
    tag = f"run{run}-{daemon.name}"
    step(out, "small", lambda: workloads.small_changes(probe, s.changes, rng), daemon)
    same = dataclasses.replace(probe, timeout_s=SAME_SIZE_WAIT_S)
    step(out, "same_size", lambda: workloads.same_size_rewrite(same, tag), daemon)
    step(out, "burst", lambda: workloads.burst(probe, tag), daemon)
    step(out, "big_line", lambda: workloads.big_file_line(probe, tag), daemon)
    if "big_line" in out and isinstance(daemon, BmsyncDaemon):
        out["big_line"]["last_batch"] = (daemon.status() or {}).get("last_batch")
    step(out, "rename", lambda: workloads.renames(probe), daemon)
    step(out, "delete", lambda: workloads.deletes(probe), daemon)


def idle(daemon: Daemon, seconds: float) -> dict[str, Any]:
    daemon.settle()
    fig = proc.watch_idle(daemon.pid, seconds)
    return {
        "seconds": fig.seconds,
        "cpu_percent": fig.cpu_percent,
        "rss_mib": round(fig.rss_mib_median, 1),
        "rss_mib_max": round(fig.rss_mib_max, 1),
        "rss_kib_samples": fig.rss_kib_samples,
    }


def initial_sync(
    bench: Bench, start: Callable[[], None], wait: Callable[[], float], dst: Path
) -> dict[str, Any]:
    span = wire_span(bench)
    t0 = time.perf_counter()
    start()
    wait()
    took = time.perf_counter() - t0
    return {
        "seconds": round(took, 3),
        "wire": span().as_dict(),
        "differences": workloads.tree_diff(bench.src, dst),
    }


def fresh_trees(bench: Bench, tool: str) -> tuple[workloads.BenchTree, Path]:
    """The bench files recreated identically in the source, and an empty
    target for ``tool``."""
    s = bench.settings
    tree = workloads.make_bench(bench.src, s.seed, SMALL_FILES, BIG_MB, MOVES)
    os.sync()  # no tool pays for writing the source tree (bmsync's agent calls syncfs)
    return tree, fresh_dir(bench.base / "dst" / tool)


def phase_bmsync(bench: Bench, run: int) -> dict[str, Any]:
    s = bench.settings
    tree, dst = fresh_trees(bench, "bmsync")
    daemon = BmsyncDaemon("bmsync", bench.link, bench.src, dst, fresh_dir(bench.base / "bm-main"))
    out: dict[str, Any] = {"tool": daemon.describe()}
    try:
        step(
            out,
            "initial",
            lambda: initial_sync(
                bench, daemon.start, lambda: daemon.wait_syncing(START_TIMEOUT_S), dst
            ),
            None,
        )
        daemon.check()
        if "initial" in out:
            out["initial"]["breakdown"] = daemon.startup_breakdown()
        out["rss_mib_after_initial"] = mib(proc.tree_rss_kib(daemon.pid))
        daemon_workloads(bench, out, daemon, tree, run)
        step(out, "idle", lambda: idle(daemon, s.idle_s), daemon)
        out["agent_rss_mib"] = mib(sum(proc.tree_rss_kib(p) for p in daemon.agent_pids()))
        out["final_differences"] = workloads.tree_diff(bench.src, dst)
        out["status"] = daemon.status_cli()
    finally:
        out["exit_code"] = daemon.stop()
    return out


def phase_lsyncd(bench: Bench, run: int, delay_s: float | None) -> dict[str, Any]:
    s = bench.settings
    name = "lsyncd0" if delay_s == 0 else "lsyncd15"
    tree, dst = fresh_trees(bench, name)
    daemon = Lsyncd(name, bench.link, bench.src, dst, fresh_dir(bench.base / name), delay_s)
    out: dict[str, Any] = {"tool": daemon.describe()}
    try:
        step(
            out,
            "initial",
            lambda: initial_sync(
                bench, daemon.start, lambda: daemon.wait_initial(START_TIMEOUT_S), dst
            ),
            None,
        )
        daemon.check()
        daemon.settle()
        if delay_s == 0:
            daemon_workloads(bench, out, daemon, tree, run)
            step(out, "idle", lambda: idle(daemon, s.idle_s), daemon)
        else:  # slow by design: three small changes and the same-size rewrite
            probe = Probe(tree, dst, daemon, bench.wire, SLOW_SAMPLE_TIMEOUT_S)
            rng = random.Random(s.seed * 1000 + run)
            step(out, "small", lambda: workloads.small_changes(probe, SLOW_CHANGES, rng), daemon)
            same = dataclasses.replace(probe, timeout_s=SLOW_SAME_SIZE_WAIT_S)
            step(out, "same_size", lambda: workloads.same_size_rewrite(same, f"run{run}"), daemon)
        out["final_differences"] = workloads.tree_diff(bench.src, dst)
    finally:
        out["exit_code"] = daemon.stop()
    return out


def phase_rsync(bench: Bench, run: int) -> dict[str, Any]:
    tree, dst = fresh_trees(bench, "rsync")
    out: dict[str, Any] = {"tool": f"rsync {rsync_version()} (one-shot, -a -A -X --numeric-ids)"}

    def initial() -> dict[str, Any]:
        span = wire_span(bench)
        r = rsync_once(bench.link, f"{bench.src}/", f"{dst}/", RSYNC_TIMEOUT_S)
        return {
            "seconds": round(r.seconds, 3),
            "wire": span().as_dict(),
            "differences": workloads.tree_diff(bench.src, dst),
        }

    def big_line(whole_tree: bool) -> dict[str, Any]:
        span = wire_span(bench)
        line = workloads.change_big_line(tree, f"run{run}-rsync-{whole_tree}")
        t0 = time.perf_counter()
        if whole_tree:
            rsync_once(bench.link, f"{bench.src}/", f"{dst}/", RSYNC_TIMEOUT_S)
        else:
            rsync_once(bench.link, str(bench.src / tree.big), str(dst / tree.big), 120, ())
        took = time.perf_counter() - t0
        if not workloads.big_line_arrived(tree, dst / tree.big, line)():
            raise BenchError("rsync finished but the changed line is not on the target")
        return {
            "seconds": round(took, 4),
            "wire": span().as_dict(),
            "identical": workloads.same_content(bench.src / tree.big, dst / tree.big),
        }

    step(out, "initial", initial, None)
    step(out, "big_line", lambda: big_line(False), None)
    step(out, "big_line_tree", lambda: big_line(True), None)
    return out


# -- 100k files ----------------------------------------------------------------------------


@dataclass
class Many:
    src: Path
    dst: Path
    files: int
    daemon: BmsyncDaemon
    first_start: dict[str, Any]


def prepare_many(bench: Bench) -> Many:
    s = bench.settings
    src = fresh_dir(bench.base / "many-src")
    t0 = time.monotonic()
    files = workloads.build_many(src, s.many_dirs, s.per_dir, s.seed)
    dst = bench.base / "many-dst"
    shutil.rmtree(dst, ignore_errors=True)
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True, timeout=1800)
    os.sync()
    print(f"  built {files} files and their copy in {time.monotonic() - t0:.1f} s")
    daemon = BmsyncDaemon("bmsync-many", bench.link, src, dst, fresh_dir(bench.base / "bm-many"))
    # the first start fills the state dir (the target is already a copy)
    span = wire_span(bench)
    t0 = time.perf_counter()
    try:
        daemon.start()
        daemon.wait_syncing(START_TIMEOUT_S)
        first = {"seconds": round(time.perf_counter() - t0, 3), "wire": span().as_dict()}
        first["status"] = daemon.status()
    finally:
        daemon.stop()
    return Many(src, dst, files, daemon, first)


def phase_many(bench: Bench, many: Many) -> dict[str, Any]:
    out: dict[str, Any] = {"files": many.files}
    daemon = many.daemon

    def start() -> dict[str, Any]:
        span = wire_span(bench)
        t0 = time.perf_counter()
        daemon.start()
        daemon.wait_syncing(START_TIMEOUT_S)
        took = time.perf_counter() - t0
        agents = daemon.agent_pids()
        return {
            "seconds": round(took, 3),
            "wire": span().as_dict(),
            "breakdown": daemon.startup_breakdown(),
            "hwm_mib": mib(proc.status_kib(daemon.pid, "VmHWM")),
            "rss_mib": mib(proc.status_kib(daemon.pid, "VmRSS")),
            "agent_hwm_mib": mib(
                max((proc.status_kib(p, "VmHWM") or 0 for p in agents), default=0)
            ),
        }

    def resync() -> dict[str, Any]:
        span = wire_span(bench)
        took, report = daemon.resync_cli(START_TIMEOUT_S)
        return {
            "seconds": round(took, 3),
            "wire": span().as_dict(),
            "report": report,
            "hwm_mib": mib(proc.status_kib(daemon.pid, "VmHWM")),
            "rss_mib": mib(proc.status_kib(daemon.pid, "VmRSS")),
        }

    def rsync_pass() -> dict[str, Any]:
        span = wire_span(bench)
        r = rsync_once(
            bench.link, f"{many.src}/", f"{many.dst}/", RSYNC_TIMEOUT_S, ("--delete", "-i")
        )
        return {
            "seconds": round(r.seconds, 3),
            "wire": span().as_dict(),
            "items_changed": len(r.stdout.splitlines()),
        }

    try:
        step(out, "bmsync_start", start, None)
        if daemon.process is not None and daemon.process.poll() is None:
            step(out, "bmsync_resync", resync, daemon)
            out["bmsync_hwm_mib"] = mib(proc.status_kib(daemon.pid, "VmHWM"))
            out["status"] = daemon.status()
    finally:
        out["exit_code"] = daemon.stop()
    step(out, "rsync", rsync_pass, None)
    return out


# -- summary -------------------------------------------------------------------------------


def dig(record: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return record


# (workload, tool, figure, unit, path into one run's record)
Metric = tuple[str, str, str, str, tuple[str, ...]]


def metrics(settings: Settings) -> list[Metric]:
    small = f"small change x{settings.changes}"
    out: list[Metric] = []
    for tool in TOOLS:
        out += [
            ("initial sync", tool, "time", "s", ("tools", tool, "initial", "seconds")),
            ("initial sync", tool, "wire", "B", ("tools", tool, "initial", "wire", "total")),
        ]
    for tool in ("bmsync", "lsyncd0", "lsyncd15"):
        label = small if tool != "lsyncd15" else f"small change x{SLOW_CHANGES}"
        t = ("tools", tool)
        out += [
            (label, tool, "p50", "ms", (*t, "small", "p50_ms")),
            (label, tool, "p95", "ms", (*t, "small", "p95_ms")),
            (label, tool, "max", "ms", (*t, "small", "max_ms")),
            (label, tool, "wire/change", "B", (*t, "small", "wire_per_change")),
            ("same-size rewrite", tool, "propagated", "bool", (*t, "same_size", "propagated")),
        ]
    for tool in ("bmsync", "lsyncd0"):
        t = ("tools", tool)
        out += [
            ("500-file burst", tool, "time", "s", (*t, "burst", "seconds")),
            ("500-file burst", tool, "wire", "B", (*t, "burst", "wire", "total")),
            ("20 MB, one line", tool, "time", "s", (*t, "big_line", "seconds")),
            ("20 MB, one line", tool, "wire", "B", (*t, "big_line", "wire", "total")),
            ("rename", tool, "p50", "ms", (*t, "rename", "p50_ms")),
            ("rename", tool, "max", "ms", (*t, "rename", "max_ms")),
            ("delete", tool, "p50", "ms", (*t, "delete", "p50_ms")),
            ("delete", tool, "max", "ms", (*t, "delete", "max_ms")),
            (f"idle {settings.idle_s:g} s", tool, "RSS", "MiB", (*t, "idle", "rss_mib")),
            (f"idle {settings.idle_s:g} s", tool, "CPU", "%", (*t, "idle", "cpu_percent")),
        ]
    big = ("tools", "bmsync", "big_line", "last_batch", "bytes")
    tree = ("tools", "rsync", "big_line_tree")
    out += [
        ("20 MB, one line", "bmsync", "status bytes", "B", big),
        ("20 MB, one line", "rsync", "time", "s", ("tools", "rsync", "big_line", "seconds")),
        ("20 MB, one line", "rsync", "wire", "B", ("tools", "rsync", "big_line", "wire", "total")),
        ("20 MB, one line", "rsync (tree)", "time", "s", (*tree, "seconds")),
        ("20 MB, one line", "rsync (tree)", "wire", "B", (*tree, "wire", "total")),
    ]
    many = f"{settings.many_dirs * settings.per_dir // 1000}k files, no change"
    out += [
        (many, "bmsync", "start-up", "s", ("many", "bmsync_start", "seconds")),
        (many, "bmsync", "resync", "s", ("many", "bmsync_resync", "seconds")),
        (many, "bmsync", "peak RSS", "MiB", ("many", "bmsync_hwm_mib")),
        (many, "bmsync", "agent peak RSS", "MiB", ("many", "bmsync_start", "agent_hwm_mib")),
        (many, "bmsync", "start-up wire", "B", ("many", "bmsync_start", "wire", "total")),
        (many, "rsync", "time", "s", ("many", "rsync", "seconds")),
        (many, "rsync", "wire", "B", ("many", "rsync", "wire", "total")),
    ]
    return out


def values(runs: list[dict[str, Any]], path: tuple[str, ...]) -> list[Any]:
    return [v for r in runs if (v := dig(r, path)) is not None]


def spread(vals: list[float]) -> dict[str, float | int]:
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def fmt_num(v: float, unit: str) -> str:
    if unit == "B":
        if abs(v) >= 10 * 1024 * 1024:
            return f"{v / 1048576:.1f} MiB"
        if abs(v) >= 10 * 1024:
            return f"{v / 1024:.0f} KiB"
        return f"{v:.0f} B"
    if unit == "ms":
        return f"{v:.1f} ms"
    if unit == "s":
        return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"
    if unit == "%":
        return f"{v:.2f} %"
    if unit == "x":
        return f"{v:.1f}x"
    return f"{v:.1f} {unit}"


def fmt_spread(vals: list[Any], unit: str) -> str:
    if unit == "bool":
        yes = sum(1 for v in vals if v)
        return f"{yes}/{len(vals)} propagated" if vals else "-"
    if not vals:
        return "-"
    s = spread([float(v) for v in vals])
    text = fmt_num(s["median"], unit)
    if len(vals) > 1:
        lo, hi = fmt_num(s["min"], unit), fmt_num(s["max"], unit)
        text += f" ({lo} - {hi})"
    return text


WORKLOAD_ORDER = (
    "initial sync",
    "small change",
    "same-size",
    "500-file",
    "20 MB",
    "rename",
    "delete",
    "idle",
    "files, no change",
)
TOOL_ORDER = ("bmsync", "lsyncd0", "lsyncd15", "rsync", "rsync (tree)")


def row_rank(workload: str, tool: str) -> tuple[int, int]:
    w = next((i for i, k in enumerate(WORKLOAD_ORDER) if k in workload), len(WORKLOAD_ORDER))
    t = TOOL_ORDER.index(tool) if tool in TOOL_ORDER else len(TOOL_ORDER)
    return w, t


def table(runs: list[dict[str, Any]], settings: Settings) -> tuple[list[str], dict[str, Any]]:
    rows: dict[tuple[str, str], list[str]] = {}
    summary: dict[str, Any] = {}
    for workload, tool, figure, unit, path in metrics(settings):
        vals = values(runs, path)
        if not vals:
            continue
        rows.setdefault((workload, tool), []).append(f"{figure} {fmt_spread(vals, unit)}")
        entry: dict[str, Any] = {"unit": unit, "values": vals}
        if unit != "bool":
            entry.update(spread([float(v) for v in vals]))
        summary.setdefault(workload, {}).setdefault(tool, {})[figure] = entry
    width_w = max((len(w) for w, _ in rows), default=10)
    width_t = max((len(t) for _, t in rows), default=10)
    lines = [f"{'workload':<{width_w}}  {'tool':<{width_t}}  figures: median (min - max)"]
    last = ""
    for (workload, tool), figs in sorted(rows.items(), key=lambda kv: row_rank(*kv[0])):
        shown = workload if workload != last else ""
        last = workload
        lines.append(f"{shown:<{width_w}}  {tool:<{width_t}}  " + "; ".join(figs))
    return lines, summary


@dataclass(frozen=True)
class Verdict:
    target: str
    values: list[float]
    unit: str
    ok: Callable[[float], bool]
    every_run: bool = False  # pass only if every run passes (else: the median)

    def render(self) -> dict[str, Any]:
        if not self.values:
            return {"target": self.target, "pass": None, "shown": "not measured"}
        med = statistics.median(self.values)
        worst_ok = all(self.ok(v) for v in self.values)
        shown = fmt_spread(self.values, self.unit)
        return {
            "target": self.target,
            "pass": worst_ok if self.every_run else self.ok(med),
            "every_run_passes": worst_ok,
            "median": med,
            "values": self.values,
            "shown": shown,
        }


def ratios(runs: list[dict[str, Any]], num: tuple[str, ...], den: tuple[str, ...]) -> list[float]:
    out = []
    for r in runs:
        a, b = dig(r, num), dig(r, den)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
            out.append(round(a / b, 2))
    return out


def verdicts(runs: list[dict[str, Any]]) -> list[Verdict]:
    bm = ("tools", "bmsync")
    l0 = ("tools", "lsyncd0")
    rs = ("tools", "rsync")
    same = values(runs, (*bm, "same_size", "propagated"))
    return [
        Verdict("single small change p50 <= 10 ms", values(runs, (*bm, "small", "p50_ms")), "ms",
                lambda v: v <= 10),
        Verdict("single small change p95 <= 30 ms", values(runs, (*bm, "small", "p95_ms")), "ms",
                lambda v: v <= 30),
        Verdict("small change p95 >= 15x lower than lsyncd delay=0",
                ratios(runs, (*l0, "small", "p95_ms"), (*bm, "small", "p95_ms")), "x",
                lambda v: v >= 15),
        Verdict("same-size rewrite never lost", same, "bool", bool, every_run=True),
        Verdict("500-file burst <= 0.5 s", values(runs, (*bm, "burst", "seconds")), "s",
                lambda v: v <= 0.5),
        Verdict("500-file burst >= 2x faster than lsyncd delay=0",
                ratios(runs, (*l0, "burst", "seconds"), (*bm, "burst", "seconds")), "x",
                lambda v: v >= 2),
        Verdict("20 MB one-line change <= 8 KiB on the wire",
                values(runs, (*bm, "big_line", "wire", "total")), "B", lambda v: v <= 8192),
        Verdict("20 MB one-line change >= 2x faster than rsync (that file)",
                ratios(runs, (*rs, "big_line", "seconds"), (*bm, "big_line", "seconds")), "x",
                lambda v: v >= 2),
        Verdict("rename <= 30 ms (slowest of the run)", values(runs, (*bm, "rename", "max_ms")),
                "ms", lambda v: v <= 30),
        Verdict("delete <= 30 ms (slowest of the run)", values(runs, (*bm, "delete", "max_ms")),
                "ms", lambda v: v <= 30),
        Verdict("initial sync no slower than rsync (rsync time / bmsync time >= 1)",
                ratios(runs, (*rs, "initial", "seconds"), (*bm, "initial", "seconds")), "x",
                lambda v: v >= 1),
        Verdict("idle RSS <= 40 MiB", values(runs, (*bm, "idle", "rss_mib")), "MiB",
                lambda v: v <= 40),
        Verdict("idle CPU <= 0.5 %", values(runs, (*bm, "idle", "cpu_percent")), "%",
                lambda v: v <= 0.5),
        Verdict("many files: warm start-up no slower than rsync no-change (rsync / bmsync >= 1)",
                ratios(runs, ("many", "rsync", "seconds"), ("many", "bmsync_start", "seconds")),
                "x", lambda v: v >= 1),
        Verdict("many files: daemon peak RSS <= 150 MiB", values(runs, ("many", "bmsync_hwm_mib")),
                "MiB", lambda v: v <= 150),
    ]  # fmt: skip


# -- main --------------------------------------------------------------------------------


def source_fingerprint() -> dict[str, str]:
    """Which bmsync was measured: a digest of its sources and their newest mtime."""
    h = hashlib.sha256()
    newest = 0.0
    for path in sorted((REPO / "bmsync").rglob("*.py")):
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    return {
        "sha256": h.hexdigest()[:16],
        "newest_mtime": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(newest)),
    }


def breakdown_line(label: str, breakdowns: list[dict[str, float]]) -> str:
    """Where bmsync's start went (its own log; median ms over the runs)."""
    if not breakdowns:
        return f"bmsync {label}: no breakdown"
    keys = ("daemon_started_ms", "connected_ms", "session_open_ms", "reconciled_ms")
    names = ("imports done", "ssh connected", "agent answered", "reconciled")
    parts = []
    for key, name in zip(keys, names, strict=True):
        got = [b[key] for b in breakdowns if key in b]
        if got:
            parts.append(f"{name} {statistics.median(got):.0f}")
    rec = [b["reconcile_duration_ms"] for b in breakdowns if "reconcile_duration_ms" in b]
    if rec:
        parts.append(f"(reconcile itself {statistics.median(rec):.0f})")
    return f"bmsync {label}, ms after the process start (its log): " + ", ".join(parts)


def check_prerequisites(tools: tuple[str, ...]) -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root (nftables counters, a private sshd, owners)")
    need = {"nft": "nftables", "rsync": "rsync", "ssh": "openssh-client", "cp": "coreutils"}
    if "lsyncd0" in tools or "lsyncd15" in tools:
        need["lsyncd"] = "lsyncd"
    missing = [pkg for binary, pkg in need.items() if shutil.which(binary) is None]
    if not Path("/usr/sbin/sshd").exists():
        missing.append("openssh-server")
    if missing:
        raise SystemExit(f"missing: apt-get install -y {' '.join(missing)}")


def handshake_bytes(bench: Bench) -> dict[str, Any]:
    """One bare SSH connection (``ssh host true``): the cost every one-shot
    rsync and every lsyncd action pays before its first byte of data."""
    span = wire_span(bench)
    t0 = time.perf_counter()
    subprocess.run(
        [*bench.link.ssh_command(), "root@127.0.0.1", "true"],
        check=True,
        timeout=60,
        capture_output=True,
    )
    return {"seconds": round(time.perf_counter() - t0, 3), "wire": span().as_dict()}


def guarded(errors: list[str], what: str, func: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return func()
    except Exception as exc:  # noqa: BLE001 - one tool failing must not stop the others
        message = f"{what}: {type(exc).__name__}: {exc}"
        print(f"  {message}", file=sys.stderr)
        traceback.print_exc()
        errors.append(message)
        return {"error": message}


@contextlib.contextmanager
def terminated_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` cleans up."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def partial_many(bench: Bench) -> Callable[[], dict[str, Any]]:
    return lambda: {"many": prepare_many(bench)}


def run_all(bench: Bench) -> dict[str, Any]:
    s = bench.settings
    errors: list[str] = []
    result: dict[str, Any] = {"runs": [], "errors": errors}
    result["ssh_handshake"] = guarded(errors, "bare ssh connection", lambda: handshake_bytes(bench))
    many: Many | None = None
    phases: dict[str, Callable[[Bench, int], dict[str, Any]]] = {
        "bmsync": phase_bmsync,
        "lsyncd0": lambda b, r: phase_lsyncd(b, r, 0),
        "lsyncd15": lambda b, r: phase_lsyncd(b, r, None),
        "rsync": phase_rsync,
    }
    for run in range(1, s.runs + 1):
        record: dict[str, Any] = {"run": run, "tools": {}}
        for name in s.tools:
            print(f"run {run}/{s.runs}: {name}", flush=True)
            t0 = time.monotonic()
            phase = functools.partial(phases[name], bench, run)
            record["tools"][name] = guarded(errors, f"run {run} {name}", phase)
            record["tools"][name]["phase_s"] = round(time.monotonic() - t0, 1)
        print(f"run {run}/{s.runs}: {s.many_dirs * s.per_dir} files, no change", flush=True)
        if many is None:
            prepared = guarded(errors, "building the many-files tree", partial_many(bench))
            many = prepared.get("many")
            if many is not None:
                result["many_first_start"] = many.first_start
        if many is not None:
            phase = functools.partial(phase_many, bench, many)
            record["many"] = guarded(errors, f"run {run} many files", phase)
        result["runs"].append(record)
    return result


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        description="bmsync beside lsyncd and rsync: latency, bytes on the wire, memory, CPU."
    )
    parser.add_argument("--runs", type=int, default=None, help="repetitions (3; 1 with --quick)")
    parser.add_argument(
        "--quick", action="store_true", help="10 s idle, 20,000 files instead of 100,000, 1 run"
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/compare.json")
    parser.add_argument("--changes", type=int, default=30, help="small changes timed (30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--tools",
        default=",".join(TOOLS),
        help=f"comma-separated subset of {','.join(TOOLS)} (all)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, trees)")
    args = parser.parse_args(argv)
    tools = tuple(t for t in args.tools.split(",") if t)
    if unknown := [t for t in tools if t not in TOOLS]:
        parser.error(f"unknown tools {unknown}; choose from {TOOLS}")
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    if runs < 1 or args.changes < 2:
        parser.error("need --runs >= 1 and --changes >= 2")
    return Settings(
        runs=runs,
        quick=args.quick,
        changes=args.changes,
        idle_s=10.0 if args.quick else 30.0,
        many_dirs=200 if args.quick else 1000,
        per_dir=100,
        seed=args.seed,
        json_path=args.json,
        keep=args.keep,
        tools=tools,
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    check_prerequisites(settings.tools)
    started = time.monotonic()
    source_before = source_fingerprint()
    load_before = os.getloadavg()
    print(f"bmsync sources {source_before['sha256']} (newest file {source_before['newest_mtime']})")
    base = Path(tempfile.mkdtemp(prefix="bmsync-compare-", dir="/tmp"))
    link: Link | None = None
    wire: WireCounter | None = None
    result: dict[str, Any] = {}
    with terminated_as_exit():
        try:
            link = Link.create(base / "sshd")
            link.sshd.start()
            wire = WireCounter(link.port)
            wire.create()
            src = base / "src"
            workloads.make_source(src)
            bench = Bench(settings, base, link, wire, src)
            result = run_all(bench)
        finally:
            if wire is not None:
                try:
                    wire.delete()
                except Exception as exc:  # noqa: BLE001 - keep cleaning up
                    print(f"could not delete nft table {wire.table}: {exc}", file=sys.stderr)
            if link is not None:
                link.sshd.stop()
            if settings.keep:
                print(f"kept {base}")
            else:
                shutil.rmtree(base, ignore_errors=True)
    elapsed = time.monotonic() - started
    runs = result.get("runs", [])
    source_after = source_fingerprint()
    if source_after != source_before:
        print(
            f"warning: bmsync's sources changed during the run "
            f"({source_before['sha256']} -> {source_after['sha256']}): figures may mix versions",
            file=sys.stderr,
        )
    lines, summary = table(runs, settings)
    judged = [v.render() for v in verdicts(runs)]
    print()
    print("\n".join(lines))
    print()
    for label, path in (
        ("initial sync", ("tools", "bmsync", "initial", "breakdown")),
        ("many-files start-up", ("many", "bmsync_start", "breakdown")),
    ):
        print(breakdown_line(label, values(runs, path)))
    print(f"bytes on the wire: {WIRE_HOW}")
    hs = result.get("ssh_handshake", {})
    if hs:
        print(
            f"one bare SSH connection (ssh host true): {hs['wire']['total']} B, "
            f"{hs['seconds'] * 1000:.0f} ms (paid by every rsync run and lsyncd action)"
        )
    print()
    print("targets (bmsync; median over runs, min - max):")
    for v in judged:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[v["pass"]]
        note = "  (not in every run)" if v["pass"] and not v["every_run_passes"] else ""
        print(f"  {mark}  {v['target']}: {v['shown']}{note}")
    for message in result.get("errors", []):
        print(f"error: {message}")
    for run in runs:
        for name, rec in run.get("tools", {}).items():
            for step_name, message in rec.get("errors", {}).items():
                print(f"error: run {run['run']} {name} {step_name}: {message}")
    print(f"\nthe whole run took {elapsed / 60:.1f} min")
    out = {
        "command": " ".join(["python3", "bench/compare.py", *(argv or sys.argv[1:])]),
        "bmsync_version": bmsync.__version__,
        "bmsync_sources": {"before": source_before, "after": source_after},
        "lsyncd_version": lsyncd_version(),
        "rsync_version": rsync_version(),
        "python": platform.python_version(),
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(elapsed, 1),
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "settings": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()},
            "small_files": SMALL_FILES,
            "big_mb": BIG_MB,
            "moves": MOVES,
            "poll_s": workloads.POLL_S,
            "burst_poll_s": workloads.BURST_POLL_S,
            "sample_timeout_s": SAMPLE_TIMEOUT_S,
            "same_size_wait_s": SAME_SIZE_WAIT_S,
            "slow_same_size_wait_s": SLOW_SAME_SIZE_WAIT_S,
            "percentiles": "nearest-rank",
        },
        "bytes_on_the_wire": WIRE_HOW,
        "summary": summary,
        "verdicts": judged,
        **result,
    }
    settings.json_path.parent.mkdir(parents=True, exist_ok=True)
    settings.json_path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {settings.json_path}")
    failed = bool(result.get("errors")) or any(
        "errors" in rec for run in runs for rec in run.get("tools", {}).values()
    )
    return 1 if failed or not runs else 0


if __name__ == "__main__":
    sys.exit(main())
