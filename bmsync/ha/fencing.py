"""Fencing, the decision: "fenced" or not, from what the BMC answered and
when.

No I/O here: ``bmsync.ha.fence`` runs the commands and feeds the answers
back, with the time, to a ``FenceMachine``.

What "fenced" means: after this node sent power off, the peer's BMC
*reported* the power off when asked. The answer to the power-off command
itself ("Chassis Power Control: Down/Off") is never taken for it: a stuck
relay gives that answer and the machine stays on. A fence only ever powers
off (``Action`` has no cycle and no reset: a cycled peer comes back). A
wrong password, a BMC that does not answer (unreachable, frozen) or a power
still on at the deadline is "NOT fenced", decided within ``timeout_s`` +
``GRACE_S`` seconds.

The commands and the reading of their answers are in ``fence_tools``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bmsync.config.model import FencingConfig
from bmsync.ha.fence_tools import IPMIPOWER_CONFIG, Action, Power, Reading, tool_for

# Between two status reads.
POLL_S = 1.0
# Power off is sent again when the BMC still reports on this long after.
RESEND_S = 5.0
# The decision is out by timeout_s + GRACE_S: a call started before the
# deadline is killed at that bound.
GRACE_S = 10.0
# What the end of a killed call may still take (reaping it).
REAP_S = 0.5


# -- the decision -----------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """Run the command for ``action``; kill it after ``limit_s``."""

    action: Action
    limit_s: float


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class Outcome:
    """``ok``: fenced (or, testing, the power state was read)."""

    ok: bool
    power: Power
    message: str
    advice: str = ""


Step = Query | Wait | Outcome

ADVICE_REFUSED = (
    "check ha.fencing.user and the password in ha.fencing.password_file "
    "(try 'bmsync ha fence --test')"
)
ADVICE_NO_ANSWER = (
    "check ha.fencing.address and port, that the BMC answers from this node "
    "('bmsync ha fence --test'), or reset the BMC; do not promote this node before the "
    "peer is known to be off"
)
ADVICE_STILL_ON = (
    "the BMC takes the command but the peer stays on (a stuck relay?): power the peer "
    "off by hand (its power cords) and check it is off before promoting this node"
)


@dataclass
class FenceMachine:
    """The fence, as a state machine driven by the caller's clock: ask
    ``next(now)`` what to do, run the ``Query`` and ``record`` its answer,
    ``Wait``, until an ``Outcome``.

    Fencing: power off, then status reads until the BMC reports off (power
    off again every ``RESEND_S`` while it reports on); the answer to power
    off never counts. ``test``: one status read, nothing changed."""

    timeout_s: float
    start: float
    test: bool = False
    _next: Action = field(init=False)
    _wait_until: float = field(init=False)
    _last_off: float | None = field(default=None, init=False)
    _off_accepted: bool = field(default=False, init=False)
    _problem: str = field(default="", init=False)
    _advice: str = field(default=ADVICE_NO_ANSWER, init=False)
    _outcome: Outcome | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._next = Action.STATUS if self.test else Action.OFF
        self._wait_until = self.start

    @property
    def deadline(self) -> float:
        return self.start + self.timeout_s

    @property
    def hard_end(self) -> float:
        """Every call is over by then, and so is the decision."""
        return self.deadline + GRACE_S - REAP_S

    def next(self, now: float) -> Step:
        if self._outcome is not None:
            return self._outcome
        if now >= self.deadline or self._wait_until >= self.deadline:
            # no command starts after the deadline: no use waiting for it
            return self._fail(now, self._problem or "no answer before the deadline")
        if now < self._wait_until:
            return Wait(self._wait_until - now)
        return Query(self._next, max(self.hard_end - now, 0.0))

    def record(self, action: Action, reading: Reading, now: float) -> None:
        """The answer to the ``Query`` for ``action``, received at ``now``."""
        if self._outcome is not None:
            return
        if reading.refused:
            self._problem, self._advice = reading.problem, ADVICE_REFUSED
            self._fail(now, reading.problem)
            return
        if self.test:
            if reading.power is Power.UNKNOWN:
                self._fail(now, reading.problem)
            else:
                self._outcome = Outcome(
                    True, reading.power, f"the peer's power is {reading.power.value}"
                )
            return
        if action is Action.OFF:
            self._last_off = now
            if reading.power is Power.OFF:
                # accepted; only a status read will tell whether it is off
                self._off_accepted = True
                self._then(Action.STATUS, now)
            elif reading.power is Power.ON:
                # an agent that waited for the power to go off, in vain
                self._problem = (
                    f"the BMC accepted power off but still reports the power on ({reading.problem})"
                )
                self._advice = ADVICE_STILL_ON
                self._then(Action.STATUS, now + POLL_S)
            else:
                self._problem, self._advice = (
                    f"power off failed: {reading.problem}",
                    ADVICE_NO_ANSWER,
                )
                self._then(Action.OFF, now + POLL_S)
            return
        if reading.power is Power.OFF:
            self._outcome = Outcome(
                True,
                Power.OFF,
                f"peer fenced: power off confirmed after {now - self.start:.1f} s",
            )
            return
        if reading.power is Power.ON:
            sent = "accepted power off" if self._off_accepted else "was sent power off"
            self._problem = f"the BMC {sent} but still reports the power on"
            self._advice = ADVICE_STILL_ON
        else:
            self._problem = f"no power status: {reading.problem}"
            self._advice = ADVICE_NO_ANSWER
        resend = self._last_off is None or now - self._last_off >= RESEND_S
        self._then(Action.OFF if resend else Action.STATUS, now + POLL_S)

    def _then(self, action: Action, at: float) -> None:
        self._next, self._wait_until = action, at

    def _fail(self, now: float, why: str) -> Outcome:
        if self.test:
            message = f"power state NOT read: {why}"
        else:
            message = f"NOT fenced: {why} (gave up after {now - self.start:.1f} s)"
        self._outcome = Outcome(False, Power.UNKNOWN, message, self._advice)
        return self._outcome


def planned(conf: FencingConfig, test: bool) -> list[str]:
    """What ``bmsync ha fence --dry-run`` prints: the commands, with the
    password file's path where the password would be."""
    password = f"<the first line of {conf.password_file}>"
    config_file = Path("<private directory, mode 0700>") / IPMIPOWER_CONFIG
    tool = tool_for(conf, password, config_file)
    lines = []
    if tool.config_text is not None:
        lines.append(f"write {config_file} (mode 0600, removed after):")
        lines += [f"  {line}" for line in tool.config_text.splitlines()]
    status = tool.command(Action.STATUS).shown()
    if test:
        return [*lines, "read the power state (changes nothing):", status]
    return [
        *lines,
        "power the peer off:",
        tool.command(Action.OFF).shown(),
        f"then read the power state every {POLL_S:g} s until the BMC reports off "
        f"(power off again every {RESEND_S:g} s while it reports on), "
        f"for {conf.timeout_s:g} s at most:",
        status,
    ]
