"""The packages depend one way: core <- config <- fs <- state <- link <-
service, ha <- agent, sender <- cli. A package imports only itself and the
ones before it, so the agent and the sender never import each other (the
daemon's own restore writes through fs.tree_writer, not through an agent)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bmsync

PACKAGE = Path(bmsync.__file__).parent
LAYER = {
    "core": 0,
    "config": 1,
    "fs": 2,
    "state": 3,
    "link": 4,
    "service": 5,
    "ha": 5,
    "agent": 6,
    "sender": 6,
    "cli": 7,
}


def imported_packages(source: Path) -> set[str]:
    """The bmsync packages ``source`` imports (anywhere in it)."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "bmsync" and len(parts) > 1 and parts[1] in LAYER:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(LAYER))
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = {
        f"{source.relative_to(PACKAGE)} imports bmsync.{other}"
        for source in sorted((PACKAGE / package).rglob("*.py"))
        for other in imported_packages(source)
        if other != package and LAYER[other] >= LAYER[package]
    }
    assert not wrong, sorted(wrong)
