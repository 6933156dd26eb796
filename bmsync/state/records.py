"""Small records the daemon keeps under ``state_dir`` across restarts: an
operator's (or the brake's) pause, and the copies the passive node kept of
files changed there."""

from __future__ import annotations

from pathlib import Path

import msgspec
import structlog

from bmsync.fs.atomic import write_atomic

log = structlog.get_logger("bmsync.records")

PAUSE_NAME = "pause.json"
BACKUPS_NAME = "passive-backups.json"
# Copies listed by `bmsync status` (all are counted).
BACKUPS_KEPT = 20


class Pause(msgspec.Struct, frozen=True):
    reason: str
    since: float  # wall clock


class PauseFlag:
    """``state_dir/pause.json``: present while sync is paused, so a restart
    (or a daemon started later) stays paused until ``bmsync resume``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PAUSE_NAME

    def load(self) -> Pause | None:
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=Pause)
        except FileNotFoundError:
            return None
        except (msgspec.MsgspecError, OSError) as exc:
            # fail closed: a pause we cannot read is still a pause
            log.warning("pause_unreadable", path=str(self.path), error=str(exc))
            return Pause(f"{self.path} is unreadable ({exc}); 'bmsync resume' clears it", 0.0)

    def save(self, pause: Pause) -> None:
        write_atomic(self.path, msgspec.json.encode(pause) + b"\n")

    def clear(self) -> bool:
        """Remove the pause; whether there was one."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


class KeptCopy(msgspec.Struct, frozen=True):
    time: float  # wall clock
    path: str
    kept: str  # where the passive node keeps its copy


class _Backups(msgspec.Struct):
    count: int = 0
    recent: list[KeptCopy] = msgspec.field(default_factory=list)


class BackupLog:
    """``state_dir/passive-backups.json``: how many files the passive node
    has kept a copy of, and the last ones, for ``bmsync status``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / BACKUPS_NAME
        self._data = _Backups()
        try:
            self._data = msgspec.json.decode(self.path.read_bytes(), type=_Backups)
        except FileNotFoundError:
            pass
        except (msgspec.MsgspecError, OSError) as exc:
            log.warning("backups_unreadable", path=str(self.path), error=str(exc))

    @property
    def count(self) -> int:
        return self._data.count

    @property
    def recent(self) -> list[KeptCopy]:
        return list(self._data.recent)

    def add(self, copies: list[KeptCopy]) -> None:
        if not copies:
            return
        self._data.count += len(copies)
        self._data.recent = [*self._data.recent, *copies][-BACKUPS_KEPT:]
        try:
            write_atomic(self.path, msgspec.json.encode(self._data) + b"\n")
        except OSError as exc:  # the list in memory still shows them
            log.warning("backups_not_recorded", path=str(self.path), error=str(exc))
