"""What the commands share to talk to a running daemon: its answers
checked, and a resync asked of it (``bmsync resync`` goes through the daemon
when one answers)."""

from __future__ import annotations

import asyncio
from typing import Any

from bmsync.config.model import Config
from bmsync.core.errors import DaemonNotRunning
from bmsync.service import control
from bmsync.service.control import check_answer

# pause, resume, promote, demote: asked to change something that did not change
NOTHING_CHANGED = 1
# A resync through the daemon can take as long as a full reconcile.
RESYNC_TIMEOUT_S = 3600.0


def resync_via_daemon(conf: Config, allow_deletes: bool = False) -> dict[str, Any] | None:
    """Ask a running daemon to reconcile; ``None`` if no daemon runs."""
    try:
        answer = asyncio.run(
            control.request(
                conf.control_socket, "resync", RESYNC_TIMEOUT_S, allow_deletes=allow_deletes
            )
        )
    except DaemonNotRunning:
        return None
    check_answer(answer, "the daemon refused the resync")
    return answer
