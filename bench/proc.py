"""Process figures from /proc: a process tree, its memory and its CPU time.

Only reads; never signals anything. "Tree" is a process and its live
descendants (found through the ``ppid`` field of every /proc/PID/stat).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    """ppid -> pids, for every process now."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            kids.setdefault(int(fields[1]), []).append(int(name))
    return kids


def descendants(pid: int) -> list[int]:
    kids = children_map()
    found: list[int] = []
    todo = list(kids.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(kids.get(child, []))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` line of /proc/PID/status (VmRSS, VmHWM, ...), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def tree_rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its live descendants, summed."""
    return sum(status_kib(p, "VmRSS") or 0 for p in [pid, *descendants(pid)])


def tree_cpu_ticks(pid: int) -> int:
    """CPU time (clock ticks) of ``pid`` (its reaped children included) and
    of its live descendants."""
    total = 0
    root = _stat_fields(pid)
    if root is not None:  # utime stime cutime cstime: fields 14..17
        total += sum(int(v) for v in root[11:15])
    for child in descendants(pid):
        fields = _stat_fields(child)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total


@dataclass(frozen=True)
class IdleFigures:
    seconds: float
    cpu_percent: float  # of one core
    rss_kib_samples: list[int]

    @property
    def rss_mib_median(self) -> float:
        s = sorted(self.rss_kib_samples)
        return s[len(s) // 2] / 1024 if s else 0.0

    @property
    def rss_mib_max(self) -> float:
        return max(self.rss_kib_samples, default=0) / 1024


def watch_idle(pid: int, seconds: float, every_s: float = 1.0) -> IdleFigures:
    """Sample the tree's RSS every ``every_s`` for ``seconds``; its CPU share
    from the utime+stime delta over the same wall time."""
    samples: list[int] = []
    ticks0 = tree_cpu_ticks(pid)
    t0 = time.monotonic()
    deadline = t0 + seconds
    while True:
        samples.append(tree_rss_kib(pid))
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(every_s, left))
    wall = time.monotonic() - t0
    ticks = tree_cpu_ticks(pid) - ticks0
    return IdleFigures(round(wall, 2), round(100.0 * ticks / CLK_TCK / wall, 3), samples)
