"""Fencing, the I/O shell: run the commands ``bmsync.ha.fencing`` builds,
with time limits, and feed their answers to its ``FenceMachine``. The
runner, the clock and the sleep are injected, so tests record every argv
and drive the time."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bmsync.config.model import FencingConfig
from bmsync.core.errors import ConfigError, FenceToolMissing, FencingError
from bmsync.ha.fence_tools import IPMIPOWER_CONFIG, needs_password, tool_for
from bmsync.ha.fencing import FenceMachine, Outcome, Query, Wait
from bmsync.ha.runner import run_bounded

# (argv, stdin or None, seconds before it is killed) -> (exit status, or
# None when it was killed at the limit; stdout and stderr together)
Runner = Callable[[Sequence[str], str | None, float], tuple[int | None, str]]

PACKAGE_OF = {"ipmitool": "ipmitool", "ipmipower": "freeipmi-tools"}
PASSWORD_READ_BYTES = 4096
# What freeIPMI's configuration file reads as a separator or a comment.
IPMIPOWER_UNSAFE = re.compile(r"[\s#]")


def run_command(argv: Sequence[str], stdin: str | None, timeout_s: float) -> tuple[int | None, str]:
    """``run_bounded``, with what to install when the tool is missing."""
    try:
        return run_bounded(argv, stdin, timeout_s)
    except FileNotFoundError as exc:
        package = PACKAGE_OF.get(argv[0], "fence-agents")
        raise FenceToolMissing(
            f"{argv[0]} is not installed on this node (ha.fencing); "
            f"install it: apt-get install {package}"
        ) from exc
    except OSError as exc:
        raise FencingError(f"cannot run {argv[0]}: {exc}") from exc


def read_password(path: Path) -> str:
    """The first line of ``path`` (ipmipower and the fence agents need the
    password itself; it never goes on a command line)."""
    try:
        with path.open("rb") as file:
            data = file.read(PASSWORD_READ_BYTES)
    except OSError as exc:
        raise ConfigError(
            f"ha.fencing.password_file: cannot read {path}: {exc.strerror or exc}"
        ) from exc
    password = data.decode(errors="replace").split("\n", 1)[0].rstrip("\r")
    if not password:
        raise ConfigError(
            f"ha.fencing.password_file: {path} is empty; write the BMC's password on its first line"
        )
    return password


@contextmanager
def _private_file(name: str, text: str | None) -> Iterator[Path]:
    """``name`` in a directory only this user may enter, holding ``text``
    (mode 0600); both removed after. Nothing is written when ``text`` is
    None."""
    if text is None:
        yield Path("/nonexistent") / name
        return
    directory = Path(tempfile.mkdtemp(prefix="bmsync-fence-"))  # mode 0700
    try:
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def fence(
    conf: FencingConfig,
    *,
    test: bool = False,
    run: Runner = run_command,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Power the peer off and confirm it (``test``: only read its power
    state). The outcome, fenced or not, with why; a BmsyncError only when
    the tool is missing or the password file cannot be read."""
    password = read_password(conf.password_file) if needs_password(conf) else ""
    if conf.method == "ipmi" and conf.tool == "ipmipower" and IPMIPOWER_UNSAFE.search(password):
        raise ConfigError(
            f"ha.fencing.password_file: the password in {conf.password_file} holds a space "
            "or '#', which ipmipower's configuration file cannot carry; use tool: ipmitool "
            "(it reads the file itself)"
        )
    config_text = tool_for(conf, password, Path(IPMIPOWER_CONFIG)).config_text
    with _private_file(IPMIPOWER_CONFIG, config_text) as config_file:
        tool = tool_for(conf, password, config_file)
        machine = FenceMachine(conf.timeout_s, clock(), test=test)
        while True:
            step = machine.next(clock())
            if isinstance(step, Outcome):
                return step
            if isinstance(step, Wait):
                sleep(step.seconds)
                continue
            assert isinstance(step, Query)
            command = tool.command(step.action)
            started = clock()
            status, out = run(command.argv, command.stdin, step.limit_s)
            now = clock()
            reading = tool.read(step.action, status, out, now - started)
            machine.record(step.action, reading, now)
