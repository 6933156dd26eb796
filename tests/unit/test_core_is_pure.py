"""The core imports nothing but the standard library, msgspec, xxhash and
other ``bmsync.core`` modules: no asyncio, asyncssh, watchdog, structlog,
yaml, socket, subprocess, rich, nor any of bmsync's I/O shell.

Each module under bmsync/core/ (listed from the directory, so a new one is
covered) is imported alone in a fresh interpreter whose import system
refuses the forbidden modules; a forbidden import, even one the module
catches (``try: import x except ImportError``), fails the test, which names
the module and what it tried to import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bmsync.core

CORE = Path(bmsync.core.__file__).parent
MODULES = sorted(
    "bmsync.core" if path.stem == "__init__" else f"bmsync.core.{path.stem}"
    for path in CORE.glob("*.py")
)
FORBIDDEN = (
    "asyncio",
    "asyncssh",
    "watchdog",
    "structlog",
    "yaml",
    "socket",
    "subprocess",
    "rich",
)

# Run in the fresh interpreter: argv[1] is the module, argv[2] the forbidden
# names (JSON). Prints one JSON line: the forbidden imports attempted, and
# the error the import of the module ended with, if any.
SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, json, sys, traceback

    module, forbidden = sys.argv[1], json.loads(sys.argv[2])
    attempts = []

    def is_forbidden(name):
        if name.startswith("bmsync."):
            return not (name == "bmsync.core" or name.startswith("bmsync.core."))
        return any(name == f or name.startswith(f + ".") for f in forbidden)

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if is_forbidden(name):
                attempts.append(name)
                raise ImportError(f"{name} is forbidden in bmsync.core", name=name)
            return None

    # loaded before the hook (by site, or the interpreter itself): forget
    # them, so that importing one again goes through the hook
    for name in [n for n in sys.modules if is_forbidden(n)]:
        del sys.modules[name]
    sys.meta_path.insert(0, Refuse())
    error = None
    try:
        importlib.import_module(module)
    except BaseException:
        error = traceback.format_exc()
    print(json.dumps({"attempts": attempts, "error": error}))
    """
)


@pytest.mark.parametrize("module", MODULES)
def test_core_module_imports_nothing_forbidden(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, module, json.dumps(FORBIDDEN)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"{module}: the check itself failed:\n{done.stderr}"
    report = json.loads(done.stdout.splitlines()[-1])
    assert not report["attempts"], (
        f"{module} imports {', '.join(report['attempts'])}, forbidden in bmsync.core:\n"
        f"{report['error'] or '(the ImportError was caught inside the core)'}"
    )
    assert report["error"] is None, f"{module} cannot be imported:\n{report['error']}"


def test_every_core_module_is_checked() -> None:
    assert "bmsync.core.frames" in MODULES and "bmsync.core.guard" in MODULES
    assert len(MODULES) == len(list(CORE.glob("*.py")))
