"""Dependencies point inward: each package of bmsync imports only packages
of a lower layer (and ``bmsync.__version__``), never one beside or above it.

The layers, innermost first: ``core`` (pure), ``config``, ``fs``, ``state``,
``link`` and ``service``, ``ha``, then the two sides (``agent`` on the
passive node, ``sender`` on the active one, which never import each other),
then ``cli``. Every import counts, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bmsync

PACKAGE = Path(bmsync.__file__).parent
LAYER = {
    "core": 0,
    "config": 1,
    "fs": 2,
    "state": 3,
    "link": 4,
    "service": 4,
    "ha": 5,
    "agent": 6,
    "sender": 6,
    "cli": 7,
}


def imported(source: Path) -> list[tuple[int, str]]:
    """(line, module) of every bmsync module ``source`` imports."""
    found = []
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "bmsync":
                found += [(node.lineno, f"bmsync.{alias.name}") for alias in node.names]
            elif node.module.startswith("bmsync."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("bmsync.")]
    return found


def package_of(module: str) -> str:
    return module.split(".")[1]


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYER)


def test_imports_point_inward() -> None:
    wrong = []
    for source in sorted(PACKAGE.rglob("*.py")):
        parts = source.relative_to(PACKAGE).parts
        if len(parts) == 1:
            continue  # __init__ (the version) and __main__ (the entry point)
        here = parts[0]
        for line, module in imported(source):
            there = package_of(module)
            if there in ("__version__", here):
                continue
            if LAYER.get(there, 99) >= LAYER[here]:
                wrong.append(f"{source.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert wrong == []


def test_the_entry_point_and_the_version_import_no_package() -> None:
    assert imported(PACKAGE / "__init__.py") == []
    assert [m for _, m in imported(PACKAGE / "__main__.py")] == ["bmsync.cli.main"]
