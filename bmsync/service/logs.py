"""structlog set-up: key/value events on stderr.

stdout belongs to command output (and, for the agent, to the protocol), so
logs always go to stderr: journald captures them under systemd, and over SSH
the agent's reach the sender.

Under systemd, stderr is a stream to journald and the service's environment
names it (``JOURNAL_STREAM=<dev>:<inode>``). Each line written there starts
with its syslog priority, ``<6>`` for info (sd-daemon(3)), which journald
strips and keeps as the entry's priority, so ``journalctl -p warning``
filters bmsync's events. Elsewhere (a terminal, a file, an SSH channel) the
lines are left as they are.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["console", "json"]

# syslog priorities (sd-daemon(3), <syslog.h>)
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def configure(
    level: str,
    fmt: LogFormat,
    *,
    environ: Mapping[str, str],
    stream: TextIO | None = None,
) -> None:
    """Log events at ``level`` and above to ``stream`` (stderr by default);
    ``environ`` is the process environment, which says whether that stream
    is the journal."""
    out = sys.stderr if stream is None else stream
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    if is_journal(out, environ):
        renderer = _with_priority(renderer)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether ``stream`` is the journal stream systemd named in ``environ``."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no descriptor (a StringIO), or closed
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def _with_priority(renderer: structlog.types.Processor) -> structlog.types.Processor:
    def render(logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        prefix = f"<{PRIORITIES.get(str(event.get('level', method)), 6)}>"
        text = str(renderer(logger, method, event))
        # journald reads one entry per line: a traceback's lines keep it too
        return "\n".join(prefix + line for line in text.split("\n"))

    return render
