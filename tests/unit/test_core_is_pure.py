"""The core imports nothing but the standard library, xxhash and msgspec:
no asyncssh, watchdog, structlog, asyncio or bmsync I/O shell."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    for banned in ("asyncssh", "watchdog", "structlog", "yaml", "rich", "asyncio"):
        sys.modules[banned] = None  # importing it now raises ImportError
    before = set(sys.modules)
    import bmsync.core.batcher, bmsync.core.brake, bmsync.core.delta
    import bmsync.core.excludes, bmsync.core.frames, bmsync.core.manifest
    import bmsync.core.ops, bmsync.core.paths, bmsync.core.planner, bmsync.core.tree
    import bmsync.core.sshkey
    ours = sorted(m for m in set(sys.modules) - before if m.startswith("bmsync"))
    print(" ".join(ours))
    """
)


def test_core_imports_without_io_libraries() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert loaded <= {
        "bmsync",
        "bmsync.core.errors",
        "bmsync.core",
        "bmsync.core.batcher",
        "bmsync.core.brake",
        "bmsync.core.delta",
        "bmsync.core.tree",
        "bmsync.core.excludes",
        "bmsync.core.frames",
        "bmsync.core.manifest",
        "bmsync.core.ops",
        "bmsync.core.paths",
        "bmsync.core.planner",
        "bmsync.core.sshkey",
    }, loaded
