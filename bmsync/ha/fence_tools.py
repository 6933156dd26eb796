"""The fencing tools: the commands that read or cut the peer's power
(ipmitool, freeIPMI's ipmipower, a Debian fence agent), and what their
answers mean. Pure: ``bmsync.ha.fence`` runs them.

The password never goes on a command line (where ``ps`` shows it): ipmitool
reads it from ``password_file`` (``-f``), ipmipower from a configuration
file of its own (mode 0600, in a private directory, removed after), a fence
agent on its stdin. Only ``Action.STATUS`` and ``Action.OFF`` exist: a
fence never cycles or resets (a cycled peer comes back)."""

from __future__ import annotations

import enum
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bmsync.config.model import FencingConfig

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
