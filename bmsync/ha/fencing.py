"""Fencing, the pure part: the commands that read or cut the peer's power,
what their answers mean, and the decision, "fenced" or not.

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

The password never goes on a command line (where ``ps`` shows it): ipmitool
reads it from ``password_file`` (``-f``), ipmipower from a configuration
file of its own (mode 0600, in a private directory, removed after), a fence
agent on its stdin.
"""

from __future__ import annotations

import enum
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bmsync.config.model import FencingConfig

# Between two status reads.
POLL_S = 1.0
# Power off is sent again when the BMC still reports on this long after.
RESEND_S = 5.0
# The decision is out by timeout_s + GRACE_S: a call started before the
# deadline is killed at that bound.
GRACE_S = 10.0
# What the end of a killed call may still take (reaping it).
REAP_S = 0.5
# A refusal within this is the BMC's answer (a wrong user or password);
# a BMC that does not answer takes ipmitool's -N/-R retries (seconds).
QUICK_REFUSAL_S = 1.0
# ipmitool's -N: seconds to wait for each answer before a retry (-R).
IPMITOOL_TIMEOUT_S = 1


class Action(enum.Enum):
    """What a fence asks the BMC: there is no cycle and no reset."""

    STATUS = "status"
    OFF = "off"


class Power(enum.Enum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Reading:
    """One answer. After ``Action.OFF``, ``Power.OFF`` means the BMC
    accepted the command, not that the power is off. ``refused``: the BMC
    refused the user or password (trying again will not help)."""

    power: Power
    problem: str = ""
    refused: bool = False


@dataclass(frozen=True)
class Command:
    """A command to run: ``argv``, and what goes on its stdin."""

    argv: tuple[str, ...]
    stdin: str | None = None

    def shown(self) -> str:
        line = shlex.join(self.argv)
        if self.stdin is None:
            return line
        return line + " <<EOF\n" + self.stdin + "EOF"


# -- ipmitool ---------------------------------------------------------------


def ipmitool_command(conf: FencingConfig, action: Action) -> Command:
    """``-f``: ipmitool reads the password from the file; ``-N``/``-R``
    bound its own retries: a BMC that does not answer takes it about
    R x (R + 1) x N seconds (-R 1: 2 s, 2: 6 s, 3: 12 s; -R 0 is not "no
    retry" but its default, 20 s: ha.fencing.retries is 1 to 5)."""
    cipher = ["-C", str(conf.cipher_suite)] if conf.interface == "lanplus" else []
    return Command(
        (
            "ipmitool",
            "-I",
            conf.interface,
            *cipher,
            "-H",
            conf.address,
            "-p",
            str(conf.port),
            "-U",
            conf.user,
            "-f",
            str(conf.password_file),
            "-N",
            str(IPMITOOL_TIMEOUT_S),
            "-R",
            str(conf.retries),
            "chassis",
            "power",
            action.value,
        )
    )


_IPMITOOL_POWER = re.compile(r"Chassis Power is (on|off)\b")
_IPMITOOL_OFF_ACCEPTED = re.compile(r"Chassis Power Control: Down/Off\b")
_IPMITOOL_NO_SESSION = re.compile(
    r"Unable to establish (IPMI v2 / RMCP\+|LAN) session|Activate Session"
)
# what some BMCs say when they refuse the user or the password
_IPMITOOL_REFUSED = re.compile(
    r"unauthorized name|invalid (user ?name|password)|HMAC is invalid|"
    r"Authentication (type )?not supported|insufficient (resources|privilege)",
    re.IGNORECASE,
)


def read_ipmitool(
    action: Action, status: int | None, out: str, elapsed_s: float, where: str
) -> Reading:
    """What ipmitool's answer means; ``status`` None: killed at its time
    limit; ``where``: the BMC, as "10.0.1.2:623", for the messages."""
    said = _said(out)
    if status is None:
        return Reading(Power.UNKNOWN, f"ipmitool did not finish (killed after {elapsed_s:.0f} s)")
    if status == 0:
        if action is Action.STATUS and (found := _IPMITOOL_POWER.search(out)):
            return Reading(Power(found.group(1)))
        if action is Action.OFF and _IPMITOOL_OFF_ACCEPTED.search(out):
            return Reading(Power.OFF)
        return Reading(Power.UNKNOWN, f"ipmitool: unexpected answer: {said}")
    if _IPMITOOL_REFUSED.search(out) or (
        _IPMITOOL_NO_SESSION.search(out) and elapsed_s < QUICK_REFUSAL_S
    ):
        return Reading(
            Power.UNKNOWN,
            f"the BMC at {where} refused the session within {elapsed_s:.1f} s: "
            f"wrong user or password ({said})",
            refused=True,
        )
    if _IPMITOOL_NO_SESSION.search(out):
        return Reading(
            Power.UNKNOWN,
            f"the BMC at {where} did not answer within {elapsed_s:.0f} s "
            f"(unreachable, or frozen): {said}",
        )
    return Reading(Power.UNKNOWN, f"ipmitool failed (exit status {status}): {said}")


# -- ipmipower (freeIPMI) ---------------------------------------------------

IPMIPOWER_CONFIG = "ipmipower.conf"


def ipmipower_command(conf: FencingConfig, config_file: Path, action: Action) -> Command:
    """``config_file``: written by ``ipmipower_config`` (it holds the user
    and the password); the session timeout bounds ipmipower's retries as
    -N/-R do ipmitool's."""
    lanplus = conf.interface == "lanplus"
    cipher = ["-I", str(conf.cipher_suite)] if lanplus else []
    session_ms = 2000 * (conf.retries + 1) * IPMITOOL_TIMEOUT_S
    return Command(
        (
            "ipmipower",
            "-D",
            "LAN_2_0" if lanplus else "LAN",
            "-h",
            f"{conf.address}:{conf.port}",
            *cipher,
            "-W",
            "opensesspriv",
            f"--config-file={config_file}",
            f"--session-timeout={session_ms}",
            f"--retransmission-timeout={1000 * IPMITOOL_TIMEOUT_S}",
            "--stat" if action is Action.STATUS else "--off",
        )
    )


def ipmipower_config(user: str, password: str) -> str:
    return f"username {user}\npassword {password}\n"


_IPMIPOWER_REFUSED = (
    "password invalid",
    "username invalid",
    "k_g invalid",
    "privilege level cannot be obtained",
    "authentication type unavailable",
)
_IPMIPOWER_NO_ANSWER = ("connection timeout", "session timeout")


def read_ipmipower(
    action: Action, status: int | None, out: str, elapsed_s: float, where: str
) -> Reading:
    """ipmipower answers "HOST: on|off|ok|<error>" (one line per host)."""
    said = _said(out)
    if status is None:
        return Reading(Power.UNKNOWN, f"ipmipower did not finish (killed after {elapsed_s:.0f} s)")
    answers = [line.split(": ", 1)[1].strip() for line in out.splitlines() if ": " in line]
    answer = answers[-1].lower() if answers else ""
    if status == 0 and action is Action.STATUS and answer in ("on", "off"):
        return Reading(Power(answer))
    if status == 0 and action is Action.OFF and answer == "ok":
        return Reading(Power.OFF)
    if any(answer.startswith(word) for word in _IPMIPOWER_REFUSED):
        return Reading(
            Power.UNKNOWN,
            f"the BMC at {where} refused the session: wrong user or password ({said})",
            refused=True,
        )
    if answer in _IPMIPOWER_NO_ANSWER:
        return Reading(
            Power.UNKNOWN,
            f"the BMC at {where} did not answer within {elapsed_s:.0f} s "
            f"(unreachable, or frozen): {said}",
        )
    return Reading(Power.UNKNOWN, f"ipmipower failed (exit status {status}): {said}")


# -- a fence agent (fence_ipmilan, fence_idrac, ...) ------------------------


def agent_command(
    conf: FencingConfig, password: str, action: Action, power_timeout_s: int
) -> Command:
    """The agent reads its options on stdin, one ``key=value`` a line; the
    password is one of them, never an argument."""
    options = [
        f"action={action.value}",
        f"ip={conf.address}",
        f"ipport={conf.port}",
        f"username={conf.user}",
        f"password={password}",
    ]
    if conf.interface == "lanplus":
        options += ["lanplus=1", f"cipher={conf.cipher_suite}"]
    options.append(f"power_timeout={power_timeout_s}")
    return Command((conf.agent,), "".join(f"{option}\n" for option in options))


# The fence agents' exit status for action=status: 0 on, 2 off.
AGENT_STATUS_ON = 0
AGENT_STATUS_OFF = 2


def read_agent(
    agent: str, action: Action, status: int | None, out: str, elapsed_s: float, where: str
) -> Reading:
    errors = [line for line in out.splitlines() if "ERROR" in line or "Failed" in line]
    said = _said("\n".join(errors) or out)
    if status is None:
        return Reading(Power.UNKNOWN, f"{agent} did not finish (killed after {elapsed_s:.0f} s)")
    if action is Action.STATUS:
        if status == AGENT_STATUS_ON and "Status: ON" in out:
            return Reading(Power.ON)
        if status == AGENT_STATUS_OFF and "Status: OFF" in out:
            return Reading(Power.OFF)
    elif status == 0:
        return Reading(Power.OFF)
    elif "Timed out waiting to power OFF" in out:
        # the agent sent power off and read the status until power_timeout
        return Reading(Power.ON, f"{agent}: {said}")
    return Reading(
        Power.UNKNOWN,
        f"{agent} failed (exit status {status}) with the BMC at {where}: {said}; "
        "check the user, the password and that the BMC answers",
    )


def _said(out: str) -> str:
    lines = [line for line in out.splitlines() if "DeprecationWarning" not in line]
    lines = [line for line in lines if not line.strip().startswith("from pipes import")]
    return " ".join(" ".join(lines).split()) or "no output"


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


# -- the method, as configured ----------------------------------------------


@dataclass(frozen=True)
class Tool:
    """How ``ha.fencing`` reads and cuts the power: the command for an
    action, and what its answer means (exit status or None, output, seconds
    it took)."""

    command: Callable[[Action], Command]
    read: Callable[[Action, int | None, str, float], Reading]
    config_text: str | None = None  # ipmipower's configuration file, if any


def tool_for(conf: FencingConfig, password: str, config_file: Path) -> Tool:
    """``password``: needed by ipmipower (in ``config_file``) and by a
    fence agent (on its stdin); ipmitool reads ``conf.password_file``."""
    where = f"{conf.address}:{conf.port}"
    if conf.method == "fence-agent":
        power_timeout = max(1, int(conf.timeout_s))
        return Tool(
            lambda action: agent_command(conf, password, action, power_timeout),
            lambda action, status, out, took: read_agent(
                conf.agent, action, status, out, took, where
            ),
        )
    if conf.tool == "ipmipower":
        return Tool(
            lambda action: ipmipower_command(conf, config_file, action),
            lambda action, status, out, took: read_ipmipower(action, status, out, took, where),
            ipmipower_config(conf.user, password),
        )
    return Tool(
        lambda action: ipmitool_command(conf, action),
        lambda action, status, out, took: read_ipmitool(action, status, out, took, where),
    )


def needs_password(conf: FencingConfig) -> bool:
    """Whether bmsync reads the password itself (ipmitool reads its file)."""
    return conf.method == "fence-agent" or conf.tool == "ipmipower"


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
