"""Running an HA tool with a time limit: in a session of its own, so that
past the limit the whole process group it started (a fence agent's
ipmitool, a service script's children) is killed, and nothing is left
behind if the caller is interrupted."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence


def run_bounded(argv: Sequence[str], stdin: str | None, timeout_s: float) -> tuple[int | None, str]:
    """Run ``argv``; its exit status (None: killed at ``timeout_s``) and its
    output, stdout and stderr together. FileNotFoundError or OSError if it
    cannot start."""
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    try:
        out, _ = process.communicate(None if stdin is None else stdin.encode(), timeout_s)
        status: int | None = process.returncode
    except subprocess.TimeoutExpired:
        status = None
        _kill_group(process)
        out, _ = process.communicate()
    finally:
        if process.returncode is None:  # interrupted: leave nothing behind
            _kill_group(process)
            process.wait()
    return status, out.decode(errors="replace")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the group of the process started here
