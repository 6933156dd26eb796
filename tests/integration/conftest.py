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

from tests.sshd import Sshd


def write_config(
    path: Path,
    node: str,
    root: Path,
    state_dir: Path,
    sshd: Sshd | None = None,
    paths: tuple[str, ...] = ("/",),
    preset: str = "none",
    exclude: tuple[str, ...] = (),
    port: int | None = None,
    known_hosts: Path | None = None,
    extra_sync: tuple[str, ...] = (),
) -> Path:
    lines = [
        f"node: {node}",
        f"state_dir: {state_dir}",
        f"control_socket: {state_dir.parent / (node + '.sock')}",
    ]
    if sshd is not None:
        lines += [
            "peer:",
            "  host: 127.0.0.1",
            f"  port: {port or sshd.port}",
            "  user: root",
            f"  identity: {sshd.client_key}",
            f"  known_hosts: {known_hosts or sshd.known_hosts}",
            "  connect_timeout_s: 5",
            "  reconnect_min_s: 0.5",
            "  reconnect_max_s: 2",
        ]
    lines += ["sync:", f"  preset: {preset}", f"  root: {root}"]
    lines.append("  paths: [" + ", ".join(json.dumps(p) for p in paths) + "]")
    lines.append("  exclude: [" + ", ".join(json.dumps(e) for e in exclude) + "]")
    lines += [f"  {line}" for line in extra_sync]
    path.write_text("\n".join(lines) + "\n")
    return path


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
