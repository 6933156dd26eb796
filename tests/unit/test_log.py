"""Logs under systemd carry their syslog priority, so `journalctl -p`
filters them; anywhere else they are plain lines."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from bmsync.service.logs import LogFormat, configure


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[TextIO]:
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as out:
        yield out
    structlog.reset_defaults()


def journal_of(stream: TextIO) -> dict[str, str]:
    """The environment systemd gives a service whose stderr is ``stream``."""
    st = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def lines_logged(stream: TextIO) -> list[str]:
    log = structlog.get_logger("bmsync.test")
    log.debug("hidden_at_info")
    log.info("batch_applied", paths=3)
    log.warning("peer_slow")
    log.error("session_failed")
    log.critical("cannot_go_on")
    stream.flush()
    stream.seek(0)
    return stream.read().splitlines()


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_journal_lines_start_with_their_priority(stream: TextIO, fmt: LogFormat) -> None:
    configure(
        "info", "json" if fmt == "json" else "console", environ=journal_of(stream), stream=stream
    )
    lines = lines_logged(stream)
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>", "<2>"]
    assert "batch_applied" in lines[0] and "paths" in lines[0]
    assert not any("hidden_at_info" in line for line in lines)


def test_debug_is_priority_7(stream: TextIO) -> None:
    configure("debug", "console", environ=journal_of(stream), stream=stream)
    assert lines_logged(stream)[0].startswith("<7>")


def test_no_prefix_without_the_journal(stream: TextIO) -> None:
    configure("info", "console", environ={}, stream=stream)
    lines = lines_logged(stream)
    assert len(lines) == 4
    assert not any(line.startswith("<") for line in lines)


def test_no_prefix_when_stderr_is_not_the_journal_stream(stream: TextIO, tmp_path: Path) -> None:
    """JOURNAL_STREAM is inherited by children whose stderr went elsewhere
    (bmsync run by a script started from a service, output redirected)."""
    other = tmp_path / "other"
    other.write_text("")
    st = other.stat()
    configure(
        "info", "console", environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream=stream
    )
    assert not any(line.startswith("<") for line in lines_logged(stream))
