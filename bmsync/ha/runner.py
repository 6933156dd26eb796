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
    status, out, _ = _run(argv, stdin, timeout_s, merge=True)
    return status, out


def run_split(argv: Sequence[str], timeout_s: float | None) -> tuple[int | None, str, str]:
    """Run ``argv`` (no input; ``timeout_s`` None: as long as it takes); its
    exit status (None: killed at the limit), stdout and stderr apart."""
    return _run(argv, None, timeout_s, merge=False)


def _run(
    argv: Sequence[str], stdin: str | None, timeout_s: float | None, merge: bool
) -> tuple[int | None, str, str]:
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge else subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    try:
        out, err = process.communicate(None if stdin is None else stdin.encode(), timeout_s)
        status: int | None = process.returncode
    except subprocess.TimeoutExpired:
        status = None
        _kill_group(process)
        out, err = process.communicate()
    finally:
        if process.returncode is None:  # interrupted: leave nothing behind
            _kill_group(process)
            process.wait()
    return status, out.decode(errors="replace"), (err or b"").decode(errors="replace")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the group of the process started here
