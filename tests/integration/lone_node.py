"""A node whose peer is down: a real bmsync configuration under a test's
tmp_path (sync root, state dir, control socket) with a `peer:` section
pointing at a closed port of 127.0.0.1. Promoted, its daemon is
`disconnected`, as an active node is after a failover. For the tests of
the cluster-manager glue in contrib/ (Pacemaker's agent, keepalived's
notify script), which drive bmsync through its commands only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.sshd import free_port, keygen

# the console script of this bmsync, as a cluster manager would run it
BMSYNC = Path(sys.executable).parent / "bmsync"


def write_lone_node(base: Path, node: str, extra_top: tuple[str, ...] = ()) -> Path:
    """``base/NODE.yaml`` for node ``node``, its tree and state under ``base``."""
    base.mkdir(parents=True, exist_ok=True)
    root = base / f"{node}-root"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "a.conf").write_text("a\n")
    key = base / f"{node}-key"
    if not key.exists():
        keygen(key)
    known_hosts = base / f"{node}-known_hosts"
    known_hosts.touch()
    conf = base / f"{node}.yaml"
    lines = [
        f"node: {node}",
        f"state_dir: {base / (node + '-state')}",
        f"control_socket: {base / (node + '.sock')}",
        "peer:",
        "  host: 127.0.0.1",
        f"  port: {free_port()}",  # nothing listens: the peer is down
        "  user: root",
        f"  identity: {key}",
        f"  known_hosts: {known_hosts}",
        "  connect_timeout_s: 2",
        "  reconnect_min_s: 0.5",
        "  reconnect_max_s: 2",
        *extra_top,
        "sync:",
        "  preset: none",
        f"  root: {root}",
        '  paths: ["/"]',
    ]
    conf.write_text("\n".join(lines) + "\n")
    return conf


def bmsync(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BMSYNC), "-c", str(conf), *args], capture_output=True, text=True, timeout=120
    )


def status(conf: Path) -> dict[str, Any]:
    """``bmsync status --json``, with its exit code as ``exit_code``."""
    done = bmsync(conf, "status", "--json")
    answer: dict[str, Any] = json.loads(done.stdout)
    answer["exit_code"] = done.returncode
    return answer


def role_file(state_dir: Path) -> dict[str, Any]:
    """The node's persisted ``state_dir/role.json`` (a lone node's state_dir
    is ``BASE/NODE-state``)."""
    record: dict[str, Any] = json.loads((state_dir / "role.json").read_text())
    return record
