"""``bmsync ha services start|stop|check``: the commands of ``ha.services``
(what uses the shared data: BlueMind's ``bmctl``), each run by ``/bin/sh
-c`` within ``timeout_s``, its output captured and logged.

``start`` and ``stop`` run their commands in order and stop at the first
that fails or times out (a half-started service is not covered up by the
next command); ``check`` runs every command and reports each. A command
past its time limit is killed with everything it started."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from bmsync.config.model import ServicesConfig
from bmsync.core.errors import HaRefused
from bmsync.ha.runner import run_bounded

log = structlog.get_logger("bmsync.ha")

Runner = Callable[[Sequence[str], str | None, float], tuple[int | None, str]]
STEPS = ("start", "stop", "check")
# Output kept in a message (the log has all of it).
SHOWN_CHARS = 400


@dataclass(frozen=True)
class Ran:
    command: str
    status: int | None  # None: killed at the time limit
    output: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == 0

    def describe(self, timeout_s: float) -> str:
        if self.status is None:
            how = f"still running after {timeout_s:g} s: killed"
        elif self.ok:
            how = f"ok in {self.seconds:.1f} s"
        else:
            how = f"exit status {self.status} after {self.seconds:.1f} s"
        said = " ".join(self.output.split())[-SHOWN_CHARS:]
        return f"'{self.command}': {how}" + (f" ({said})" if said and not self.ok else "")


def commands_of(services: ServicesConfig, step: str) -> tuple[str, ...]:
    return {"start": services.start, "stop": services.stop, "check": services.check}[step]


def shell_argv(command: str) -> list[str]:
    return ["/bin/sh", "-c", command]


def run_commands(
    services: ServicesConfig,
    step: str,
    run: Runner = run_bounded,
    clock: Callable[[], float] = time.monotonic,
) -> list[Ran]:
    """Run ``step``'s commands; what each did. A start or stop stops at the
    first that fails (the ones after it are not run); check runs them all.
    HaRefused only when a command cannot be started."""
    done: list[Ran] = []
    for command in commands_of(services, step):
        started = clock()
        try:
            status, output = run(shell_argv(command), None, services.timeout_s)
        except OSError as exc:
            raise HaRefused(f"ha.services.{step}: cannot run '{command}': {exc}") from exc
        ran = Ran(command, status, output, clock() - started)
        log.info(
            "service_command",
            step=step,
            command=command,
            status="killed" if status is None else status,
            seconds=round(ran.seconds, 2),
            output=output[-4000:],
        )
        done.append(ran)
        if not ran.ok and step != "check":
            break
    return done


def run_step(
    services: ServicesConfig,
    step: str,
    run: Runner = run_bounded,
    clock: Callable[[], float] = time.monotonic,
) -> list[Ran]:
    """Run ``step``'s commands; what each did. HaRefused when a start or
    stop command fails (the ones after it are not run) or, for check, when
    any fails."""
    done = run_commands(services, step, run, clock)
    failed = [ran for ran in done if not ran.ok]
    if failed and step != "check":
        left = len(commands_of(services, step)) - len(done)
        raise HaRefused(
            f"ha.services.{step}: {failed[0].describe(services.timeout_s)}"
            + (f"; {left} command(s) after it not run" if left else "")
            + f". Fix it, then run 'bmsync ha services {step}' again"
        )
    if failed:
        raise HaRefused(
            "ha.services.check: "
            + "; ".join(ran.describe(services.timeout_s) for ran in failed)
            + f" ({len(failed)} of {len(done)} check(s) failed)"
        )
    return done
