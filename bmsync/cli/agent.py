"""``bmsync agent``: the passive node's side of a session, on stdin/stdout
(the forced command of the sender's SSH key). Imported only when this
command runs; it loads neither asyncssh nor the daemon."""

from __future__ import annotations

import argparse
from pathlib import Path

from bmsync.agent.stdio import run_stdio


def agent(config_path: Path, args: argparse.Namespace) -> int:
    return run_stdio(config_path)
