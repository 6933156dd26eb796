"""Peak memory of a real ``bmsync agent`` under a hostile sender.

Issue 11, item 11 ("unbounded agent memory"): with the active node's SSH key
leaked, anyone can talk to the passive node's agent. Each attack below is
written to ``python -m bmsync agent`` on its stdin (tests/hostile.py), and
the agent's peak resident memory is ``ru_maxrss`` from ``wait4`` on its pid:
the kernel's high-water mark for that process alone, which does not depend
on the load of the machine.

    python3 bench/agent_memory.py [--scale 1.0] [--only NAME ...]
                                  [--json bench/results/agent_memory.json]

At ``--scale 1`` the first three are the issue's figures: 382 MB of Expect
frames with no commit, a 407 KB zlib literal that inflates to 400 MiB, and a
1.6 MB frame of 268,435 copy operations. The others are the rest of what a
session could make the agent hold (see "How it works" in README.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import bmsync  # noqa: E402
from bmsync.agent.bounds import MAX_BATCH_HELD_BYTES  # noqa: E402
from bmsync.core import delta  # noqa: E402
from bmsync.core.frames import Bye, encode  # noqa: E402
from bmsync.core.manifest import MAX_ENTRIES  # noqa: E402
from bmsync.fs.digests import RACY_NS  # noqa: E402
from tests import hostile  # noqa: E402

MIB = 1024 * 1024


@dataclass
class Attack:
    name: str
    what: str
    frames: Callable[[hostile.Passive], Iterable[bytes]]
    big_file: int = 0
    files: int = 0


@dataclass
class Result:
    name: str
    what: str
    wire_bytes: int
    peak_rss_mib: float
    exit_code: int
    seconds: float
    outcome: str


def attacks(scale: float) -> list[Attack]:
    max_ops = getattr(delta, "MAX_DELTA_OPS", 65_536)
    return [
        Attack(
            "idle",
            "Hello and Bye: the agent's own size",
            lambda p: [hostile.hello(), encode(Bye())],
        ),
        Attack(
            "expect_flood",
            f"{382 * scale:g} MB of Expect frames (4,000-byte paths), no Commit",
            lambda p: hostile.expect_flood(int(382_000_000 * scale)),
        ),
        Attack(
            "zlib_bomb",
            f"a delta literal of zeros that inflates to {400 * scale:g} MiB, "
            f"declaring a {delta.DELTA_MAX_BYTES // MIB} MiB result",
            lambda p: hostile.zlib_bomb(int(400 * MIB * scale), delta.DELTA_MAX_BYTES, p.base),
        ),
        Attack(
            "copy_flood",
            f"a delta of {int(268_435 * scale):,} copies of 1,000 bytes (one frame)",
            lambda p: hostile.copy_flood(int(268_435 * scale), 1000, p.base),
        ),
        Attack(
            "delta_at_op_limit",
            f"a delta of {max_ops:,} copies of 4,096 bytes: a "
            f"{max_ops * 4096 // MIB} MiB result, within every limit",
            lambda p: hostile.copy_flood(max_ops, 4096, p.base),
        ),
        Attack(
            "setmeta_flood",
            f"{40 * scale:g} MB of directory SetMeta frames with 9,000 xattrs each, no Commit",
            lambda p: hostile.setmeta_flood(int(40_000_000 * scale)),
        ),
        Attack(
            "staged_flood",
            "the first chunk of 20,001 files, never their end",
            lambda p: hostile.staged_flood(20_001),
        ),
        Attack(
            "worst_case",
            "what a batch may keep, nearly to its 24 MiB, then an 8 MiB delta of 65,536 literals",
            lambda p: hostile.worst_case(MAX_BATCH_HELD_BYTES - 2 * MIB, p.base),
        ),
        Attack(
            "xattr_bomb",
            "one 8 MiB SetMeta frame of 1.4 million 6-byte xattrs",
            lambda p: hostile.xattr_bomb(),
        ),
        Attack(
            "manifest_bomb",
            "one 8 MiB ManifestPart frame (agents send those, never receive them)",
            lambda p: hostile.manifest_bomb(),
        ),
        Attack(
            "fetch_big",
            f"Fetch of a {int(512 * scale)} MiB file on the passive node",
            lambda p: hostile.fetch(hostile.BIG_PATH),
            big_file=int(512 * MIB * scale),
        ),
        Attack(
            "manifest_100k",
            f"ManifestRequest on a passive node of {int(100_000 * scale):,} files: "
            "proportional to its own tree, not to what is sent",
            lambda p: hostile.manifest(),
            files=int(100_000 * scale),
        ),
        Attack(
            "manifest_100k_warm",
            "the same, asked twice: the second with the digest cache the first wrote",
            lambda p: hostile.manifest(times=2, settle_s=RACY_NS / 1e9 + 0.5),
            files=int(100_000 * scale),
        ),
        Attack(
            "manifest_past_max",
            f"ManifestRequest on a passive node of {int(MAX_ENTRIES * 1.2 * scale):,} files "
            f"(a tree a leaked key filled past sync.max_entries, {MAX_ENTRIES:,})",
            lambda p: hostile.manifest(),
            files=int(MAX_ENTRIES * 1.2 * scale),
        ),
    ]


def outcome(run: hostile.AgentRun) -> str:
    errors = run.errors()
    if errors:
        return "ErrorFrame: " + errors[0][:160]
    failures = [f for a in run.applied() for f in a.failures]
    results = [path for a in run.applied() for path, _ in a.results]
    if failures:
        return f"{len(failures)} failed of {len(results)}: " + failures[0].reason[:160]
    if run.applied():
        return f"applied: {len(results)} paths"
    return f"answered {len(run.replies)} frames, no ErrorFrame"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1 = the issue's sizes")
    parser.add_argument("--only", nargs="*", default=[], help="attack names to run")
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/agent_memory.json")
    args = parser.parse_args()
    results: list[Result] = []
    print(f"bmsync {bmsync.__version__}, agent peak RSS (ru_maxrss), scale {args.scale:g}")
    print(f"{'attack':<18} {'wire MB':>9} {'peak MiB':>9} {'exit':>4} {'s':>6}  outcome")
    for attack in attacks(args.scale):
        if args.only and attack.name not in args.only:
            continue
        with tempfile.TemporaryDirectory(prefix="bmsync-agent-memory-") as tmp:
            passive = hostile.Passive.make(Path(tmp), attack.big_file, attack.files)
            run = hostile.run_agent(passive.config, attack.frames(passive), Path(tmp) / "agent.log")
        result = Result(
            attack.name,
            attack.what,
            run.sent_bytes,
            round(run.peak_mib, 1),
            run.exit_code,
            round(run.seconds, 2),
            outcome(run),
        )
        results.append(result)
        print(
            f"{result.name:<18} {result.wire_bytes / 1e6:>9.1f} {result.peak_rss_mib:>9.1f} "
            f"{result.exit_code:>4} {result.seconds:>6.2f}  {result.outcome}",
            flush=True,
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "bmsync": bmsync.__version__,
                "python": platform.python_version(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "scale": args.scale,
                "results": [asdict(r) for r in results],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
