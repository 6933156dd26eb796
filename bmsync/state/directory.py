"""The state directory itself: created private, refused if others can
write to it."""

from __future__ import annotations

import stat
from pathlib import Path

from bmsync.core.errors import ConfigError


def ensure_state_dir(path: Path) -> Path:
    """Create ``state_dir`` (mode 0700) if missing; refuse one others can write."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as exc:
        raise ConfigError(
            f"state_dir {path}: cannot create it ({exc.strerror}); "
            "choose a writable location with 'state_dir:'"
        ) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"state_dir {path} is not a directory")
    if st.st_mode & 0o022:
        raise ConfigError(
            f"state_dir {path} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run 'chmod 700 {path}'"
        )
    return path
