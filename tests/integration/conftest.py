"""Two nodes on this machine: two directory trees, a private sshd on
127.0.0.1 whose forced command runs the passive node's agent, and the CLI
run as a separate process, as an administrator would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent_harness import Node
from tests.sshd import Sshd, write_config


@dataclass
class Pair:
    base: Path
    sshd: Sshd
    active: Path  # the active node's root
    passive: Path  # the passive node's root
    active_conf: Path
    passive_conf: Path

    def bmsync(self, *args: str, conf: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bmsync", "-c", str(conf or self.active_conf), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )

    def resync_json(self, *extra: str) -> dict[str, Any]:
        done = self.bmsync("resync", "--json", *extra)
        assert done.returncode == 0, done.stderr + done.stdout
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def configure(self, **kwargs: Any) -> None:
        """Rewrite both nodes' configs with the same sync set."""
        write_config(
            self.active_conf, "bm1", self.active, self.base / "state1", self.sshd, **kwargs
        )
        passive_kwargs = {
            k: v for k, v in kwargs.items() if k in ("paths", "preset", "exclude", "extra_sync")
        }
        write_config(self.passive_conf, "bm2", self.passive, self.base / "state2", **passive_kwargs)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    sshd = Sshd.create(tmp_path / "sshd")
    active = tmp_path / "bm1-root"
    passive = tmp_path / "bm2-root"
    active.mkdir()
    passive.mkdir()
    node = Pair(tmp_path, sshd, active, passive, tmp_path / "bm1.yaml", tmp_path / "bm2.yaml")
    node.configure()
    sshd.authorize(node.passive_conf)
    sshd.start()
    try:
        yield node
    finally:
        sshd.stop()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A passive node's root with an agent fed raw frames, closed afterwards."""
    passive = Node(tmp_path)
    try:
        yield passive
    finally:
        passive.close()
