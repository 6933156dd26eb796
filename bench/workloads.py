"""The source trees and the timed changes, the same for every tool.

Every change is made on the source tree by this process; its time starts
right after the writer's ``close()`` (or ``rename``/``unlink``) and ends when
the target tree shows the new content, found by polling the target every
``POLL_S`` (reads only). Percentiles are nearest-rank.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.tools import Daemon
from bench.wire import WireCounter

POLL_S = 0.0002  # between two looks at a target file
BURST_POLL_S = 0.001  # between two looks at the 500 target files (reading them costs)
BENCH_DIR = "etc/bench"
SMALL_SIZES = (100, 3000)  # bytes
COARSE_CLOCK_MARGIN_NS = 50_000_000  # file timestamps lag the clock by up to a tick


class BenchError(Exception):
    pass


# -- the trees -----------------------------------------------------------------------


@dataclass
class BenchTree:
    """``root``/etc/bench: the files the timed changes touch (paths relative
    to ``root``), next to the copy of /etc."""

    root: Path
    small: dict[str, bytes] = field(default_factory=dict)  # 500 small files
    big: str = f"{BENCH_DIR}/big.txt"
    big_size: int = 0
    big_line_offset: int = 0  # a line in the middle of big.txt
    big_line_len: int = 0
    single: str = f"{BENCH_DIR}/single.conf"
    service: str = f"{BENCH_DIR}/service.conf"
    movers: list[str] = field(default_factory=list)  # files to rename
    doomed: list[str] = field(default_factory=list)  # files to delete


def small_content(label: str, size: int) -> bytes:
    head = f"# bmsync compare {label} {uuid.uuid4()}\n".encode()
    body = b"key = value\n" * (size // 12 + 1)
    return (head + body)[: size - 1] + b"\n"


def service_content(tag: str, port: int) -> bytes:
    return (
        f"# service.conf, edit {tag}\n[server]\nlisten 127.0.0.1 port {port}\nworkers = 4\n"
    ).encode()


def _big_text(size: int, rng: random.Random) -> bytes:
    words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
        "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
    ]  # fmt: skip
    patterns = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(4096)]
    out: list[str] = []
    total = 0
    n = 0
    while total < size:
        line = f"{n:08d} {patterns[rng.randrange(4096)]} = {rng.randrange(10**9)}\n"
        out.append(line)
        total += len(line)
        n += 1
    return "".join(out).encode()[:size]


def make_bench(root: Path, seed: int, small_files: int, big_mb: int, moves: int) -> BenchTree:
    """(Re)create ``root``/etc/bench, the same from the same seed."""
    rng = random.Random(seed)
    bench = root / BENCH_DIR
    shutil.rmtree(bench, ignore_errors=True)
    (bench / "small").mkdir(parents=True)
    tree = BenchTree(root)
    for k in range(small_files):
        rel = f"{BENCH_DIR}/small/f{k:04d}.conf"
        data = small_content(f"small {k}", rng.randint(*SMALL_SIZES))
        (root / rel).write_bytes(data)
        tree.small[rel] = data
    big = _big_text(big_mb << 20, rng)
    (root / tree.big).write_bytes(big)
    tree.big_size = len(big)
    start = big.index(b"\n", len(big) // 2) + 1
    tree.big_line_offset = start
    tree.big_line_len = big.index(b"\n", start) - start + 1
    (root / tree.single).write_bytes(small_content("single", 500))
    (root / tree.service).write_bytes(service_content("initial", 8080))
    for k in range(moves):
        tree.movers.append(f"{BENCH_DIR}/mv-{k}.conf")
        tree.doomed.append(f"{BENCH_DIR}/rm-{k}.conf")
        (root / tree.movers[-1]).write_bytes(small_content(f"mv {k}", 300 + k))
        (root / tree.doomed[-1]).write_bytes(small_content(f"rm {k}", 300 + k))
    return tree


def make_source(root: Path) -> None:
    """``root``/etc: a copy of this machine's /etc (cp -a)."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "/etc", str(root / "etc")], check=True, timeout=600)


def build_many(root: Path, dirs: int, per_dir: int, seed: int) -> int:
    """``dirs`` directories of ``per_dir`` small files under ``root``/tree."""
    rng = random.Random(seed)
    for d in range(dirs):
        sub = root / "tree" / f"d{d:04d}"
        sub.mkdir(parents=True)
        for f in range(per_dir):
            (sub / f"f{f:03d}.conf").write_bytes(
                f"# {d}/{f}\nkey = {rng.randrange(10**12)}\n".encode() * rng.randint(1, 4)
            )
    return dirs * per_dir


def tree_diff(src: Path, dst: Path, limit: int = 10) -> list[str]:
    """Paths whose kind, content or symlink target differ (at most ``limit``)."""

    def listing(top: Path) -> dict[str, str]:
        found: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, top)
                if os.path.islink(full):
                    found[rel] = "link:" + os.readlink(full)
                elif os.path.isdir(full):
                    found[rel] = "dir"
                elif os.path.isfile(full):
                    found[rel] = "file"
                else:
                    found[rel] = "special"
        return found

    a, b = listing(src), listing(dst)
    diff: list[str] = []
    for rel in sorted(a.keys() | b.keys()):
        if a.get(rel) != b.get(rel):
            diff.append(f"{rel}: {a.get(rel, 'missing')} vs {b.get(rel, 'missing')}")
        elif a[rel] == "file" and not same_content(src / rel, dst / rel):
            diff.append(f"{rel}: content differs")
        if len(diff) >= limit:
            break
    return diff


def same_content(a: Path, b: Path) -> bool:
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                ca, cb = fa.read(1 << 20), fb.read(1 << 20)
                if ca != cb:
                    return False
                if not ca:
                    return True
    except OSError:
        return False


# -- polling -------------------------------------------------------------------------


def read_or_none(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def has(path: Path, data: bytes) -> Callable[[], bool]:
    return lambda: read_or_none(path) == data


def moved(old: Path, new: Path, data: bytes) -> Callable[[], bool]:
    return lambda: read_or_none(new) == data and not os.path.lexists(old)


def gone(path: Path) -> Callable[[], bool]:
    return lambda: not os.path.lexists(path)


def write_file(path: Path, data: bytes) -> float:
    with open(path, "wb") as f:
        f.write(data)
    return time.perf_counter()


def wait_for(
    done: Callable[[], bool], timeout_s: float, daemon: Daemon | None, poll_s: float = POLL_S
) -> float | None:
    """perf_counter() when ``done()`` first held; None after ``timeout_s``."""
    deadline = time.perf_counter() + timeout_s
    next_check = time.perf_counter() + 0.1
    while True:
        if done():
            return time.perf_counter()
        now = time.perf_counter()
        if now > deadline:
            return None
        if daemon is not None and now > next_check:
            daemon.check()
            next_check = now + 0.1
        time.sleep(poll_s)


def nearest_rank(sorted_values: list[float], p: float) -> float:
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize_ms(samples: list[float]) -> dict[str, Any]:
    s = sorted(samples)
    return {
        "n": len(s),
        "p50_ms": round(nearest_rank(s, 50), 3),
        "p95_ms": round(nearest_rank(s, 95), 3),
        "max_ms": round(s[-1], 3),
        "min_ms": round(s[0], 3),
        "samples_ms": [round(v, 3) for v in samples],
    }


# -- the timed changes ---------------------------------------------------------------


@dataclass
class Probe:
    """What every timed change needs: the trees, the tool, the wire."""

    tree: BenchTree
    dst: Path
    daemon: Daemon
    wire: WireCounter
    timeout_s: float  # one change not on the target within this: failed

    def src(self, rel: str) -> Path:
        return self.tree.root / rel

    def there(self, rel: str) -> Path:
        return self.dst / rel


def small_changes(p: Probe, n: int, rng: random.Random) -> dict[str, Any]:
    """One small file rewritten ``n`` times, each time another size."""
    sizes = rng.sample(range(SMALL_SIZES[0], SMALL_SIZES[1] + 1), n)
    samples: list[float] = []
    here, there = p.src(p.tree.single), p.there(p.tree.single)
    before = p.wire.read()
    for k, size in enumerate(sizes):
        data = small_content(f"single {k}", size)
        arrived = has(there, data)
        t0 = write_file(here, data)
        t1 = wait_for(arrived, p.timeout_s, p.daemon)
        if t1 is None:
            raise BenchError(
                f"change {k} of {p.tree.single} not on the target after {p.timeout_s:g} s"
            )
        samples.append((t1 - t0) * 1000)
        p.daemon.settle()
    wire = p.wire.read() - before
    return {**summarize_ms(samples), "wire": wire.as_dict(), "wire_per_change": wire.total // n}


def same_size_rewrite(p: Probe, tag: str) -> dict[str, Any]:
    """An edit, synced; then a same-size rewrite carrying the synced edit's
    exact mtime (as a second edit within the same second would)."""
    rel = p.tree.service
    first = service_content(tag, 8080)
    write_file(p.src(rel), first)
    there = p.there(rel)
    if wait_for(lambda: read_or_none(there) == first, p.timeout_s, p.daemon) is None:
        raise BenchError(f"the first edit of {rel} was not synced within {p.timeout_s:g} s")
    p.daemon.settle()
    st = os.stat(p.src(rel))
    second = first.replace(b"port 8080", b"port 8081")
    write_file(p.src(rel), second)
    os.utime(p.src(rel), ns=(st.st_atime_ns, st.st_mtime_ns))
    t0 = time.perf_counter()
    after = os.stat(p.src(rel))
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise BenchError(f"{rel}: the rewrite did not keep size and mtime")
    t1 = wait_for(lambda: read_or_none(there) == second, p.timeout_s, p.daemon)
    now = read_or_none(there) or b""
    p.daemon.settle()
    return {
        "propagated": t1 is not None,
        "latency_ms": None if t1 is None else round((t1 - t0) * 1000, 3),
        "waited_s": p.timeout_s,
        "target_says": "port 8081" if b"port 8081" in now else "port 8080 (lost)",
    }


def burst(p: Probe, tag: str) -> dict[str, Any]:
    """Every small file rewritten at once; time from the last close until
    all of them are identical on the target."""
    wanted = {rel: f"# burst {tag}\n".encode() + data for rel, data in p.tree.small.items()}
    before = p.wire.read()
    t_first = time.perf_counter()
    for rel, data in wanted.items():
        write_file(p.src(rel), data)
    t0 = time.perf_counter()
    pending = dict(wanted)

    def all_there() -> bool:
        for rel in list(pending):
            if read_or_none(p.there(rel)) == pending[rel]:
                del pending[rel]
            else:
                return False
        return True

    t1 = wait_for(all_there, max(p.timeout_s, 30.0), p.daemon, BURST_POLL_S)
    if t1 is None:
        raise BenchError(f"{len(pending)} of {len(wanted)} burst files not on the target")
    p.daemon.settle()
    p.tree.small = wanted
    return {
        "files": len(wanted),
        "seconds": round(t1 - t0, 4),
        "from_first_write_s": round(t1 - t_first, 4),
        "writing_s": round(t0 - t_first, 4),
        "wire": (p.wire.read() - before).as_dict(),
    }


def wait_next_second(path: Path) -> None:
    """Sleep until file timestamps are past the second of ``path``'s mtime,
    so that a same-size edit gets another mtime second: rsync's quick check
    (size, mtime in whole seconds) would skip it otherwise, which the
    same-size test measures on its own; this one measures the delta. The
    kernel stamps files from a coarse clock a tick behind ``time.time()``,
    hence the margin."""
    second = os.stat(path).st_mtime_ns // 10**9
    while time.time_ns() < (second + 1) * 10**9 + COARSE_CLOCK_MARGIN_NS:
        time.sleep(0.01)


def change_big_line(tree: BenchTree, tag: str) -> bytes:
    """Rewrite one line in the middle of big.txt in place (same length, in
    a later mtime second); the new line. The time starts at the return."""
    wait_next_second(tree.root / tree.big)
    line = f"# changed by the benchmark, {tag} {uuid.uuid4()}"
    line = line[: tree.big_line_len - 1].ljust(tree.big_line_len - 1, "#") + "\n"
    data = line.encode()
    with open(tree.root / tree.big, "r+b") as f:
        f.seek(tree.big_line_offset)
        f.write(data)
    return data


def big_line_arrived(tree: BenchTree, there: Path, line: bytes) -> Callable[[], bool]:
    """Both tools rename a complete file into place: the new line at its
    offset and the right size mean the whole file arrived (checked after)."""

    def arrived() -> bool:
        try:
            with open(there, "rb") as f:
                if os.fstat(f.fileno()).st_size != tree.big_size:
                    return False
                f.seek(tree.big_line_offset)
                return f.read(len(line)) == line
        except FileNotFoundError:
            return False

    return arrived


def big_file_line(p: Probe, tag: str) -> dict[str, Any]:
    before = p.wire.read()
    line = change_big_line(p.tree, tag)
    t0 = time.perf_counter()
    t1 = wait_for(big_line_arrived(p.tree, p.there(p.tree.big), line), p.timeout_s, p.daemon, 0.001)
    if t1 is None:
        raise BenchError(f"the changed line of {p.tree.big} not on the target")
    p.daemon.settle()
    return {
        "seconds": round(t1 - t0, 4),
        "wire": (p.wire.read() - before).as_dict(),
        "identical": same_content(p.src(p.tree.big), p.there(p.tree.big)),
    }


def renames(p: Probe) -> dict[str, Any]:
    def each() -> Iterator[tuple[str, Callable[[], bool], Callable[[], None]]]:
        for rel in p.tree.movers:
            new = rel.replace("/mv-", "/moved-")
            arrived = moved(p.there(rel), p.there(new), p.src(rel).read_bytes())
            yield f"rename {rel} -> {new}", arrived, partial(os.rename, p.src(rel), p.src(new))

    return _time_each(p, each())


def deletes(p: Probe) -> dict[str, Any]:
    def each() -> Iterator[tuple[str, Callable[[], bool], Callable[[], None]]]:
        for rel in p.tree.doomed:
            yield f"delete of {rel}", gone(p.there(rel)), partial(os.unlink, p.src(rel))

    return _time_each(p, each())


def _time_each(
    p: Probe, changes: Iterator[tuple[str, Callable[[], bool], Callable[[], None]]]
) -> dict[str, Any]:
    """For each (what, arrived, make it): make the change, then time until
    it has arrived on the target, one at a time."""
    samples: list[float] = []
    before = p.wire.read()
    for what, arrived, change in changes:
        change()
        t0 = time.perf_counter()
        t1 = wait_for(arrived, p.timeout_s, p.daemon)
        if t1 is None:
            raise BenchError(f"{what} not on the target")
        samples.append((t1 - t0) * 1000)
        p.daemon.settle()
    return {**summarize_ms(samples), "wire": (p.wire.read() - before).as_dict()}
