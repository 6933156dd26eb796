"""The tree writer's temporary files, ``.bmsync-tmp.<random>``.

New content, symlinks and copies are made under such a name in their
target's directory, then renamed over the target: a reader sees the old
version or the new one, never a mix. The scanner never lists them
(``scan.TMP_PREFIX``), and a writing session removes those a killed writer
left, so one that cannot be removed now is only logged.
"""

from __future__ import annotations

import os
import secrets

import structlog

from bmsync.core.paths import show
from bmsync.fs.confine import reason
from bmsync.fs.scan import TMP_PREFIX

log = structlog.get_logger("bmsync.tree")


def tmp_name() -> bytes:
    return TMP_PREFIX + secrets.token_hex(8).encode()


def create_temp(dir_fd: int) -> tuple[bytes, int]:
    """A new temporary file in ``dir_fd`` (``O_EXCL``, mode 0600): its
    name and a descriptor open for writing."""
    name = tmp_name()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return name, os.open(name, flags, 0o600, dir_fd=dir_fd)


def remove_temp(dir_fd: int, name: bytes, shown: bytes) -> bool:
    """Remove a temporary file of ours (``shown``: its path, for the log).
    One that cannot be removed (a read-only or failing filesystem) is
    logged and left: the next writing session removes it (``.bmsync-tmp.*``
    is never part of a manifest). False when it is still there."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning(
            "temp_file_left",
            path=show(shown),
            reason=reason(exc),
            what="cannot be removed; the next writing session removes it",
        )
        return False
    return True
