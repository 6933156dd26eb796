"""Fencing: the commands (the password never in an argv), what their
answers mean, and the decision, driven by a fake clock and scripted
answers."""

from __future__ import annotations

import itertools
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bmsync.config.model import FencingConfig
from bmsync.core.errors import ConfigError, FenceToolMissing, FencingError
from bmsync.ha import fence as shell
from bmsync.ha.fence_tools import (
    Action,
    Power,
    Reading,
    agent_command,
    ipmipower_command,
    ipmipower_config,
    ipmitool_command,
    read_agent,
    read_ipmipower,
    read_ipmitool,
)
from bmsync.ha.fencing import GRACE_S, RESEND_S, FenceMachine, Outcome, Query, Wait, planned

PASSWORD = "s3cr3t-Pa55"
PWFILE = Path("/etc/bmsync/ipmi-password")
CONF = FencingConfig(address="10.0.1.2", user="admin", password_file=PWFILE)
WHERE = "10.0.1.2:623"
NO_SESSION = "Error: Unable to establish IPMI v2 / RMCP+ session\n"


# -- the commands -------------------------------------------------------------


def test_ipmitool_argv() -> None:
    assert ipmitool_command(CONF, Action.OFF).argv == (
        "ipmitool", "-I", "lanplus", "-C", "3", "-H", "10.0.1.2", "-p", "623", "-U", "admin",
        "-f", str(PWFILE), "-N", "1", "-R", "2", "chassis", "power", "off",
    )  # fmt: skip
    status = ipmitool_command(CONF, Action.STATUS)
    assert status.argv[-3:] == ("chassis", "power", "status")
    assert status.stdin is None


def test_ipmitool_argv_over_lan() -> None:
    conf = FencingConfig("bmc2", "u", PWFILE, interface="lan", port=6230, retries=1)
    argv = ipmitool_command(conf, Action.STATUS).argv
    assert argv[:3] == ("ipmitool", "-I", "lan")
    assert "-C" not in argv
    assert argv[argv.index("-p") + 1] == "6230"
    assert argv[argv.index("-R") + 1] == "1"


def test_ipmipower_argv_and_its_config_file() -> None:
    config = Path("/tmp/private/ipmipower.conf")
    assert ipmipower_command(CONF, config, Action.STATUS).argv == (
        "ipmipower", "-D", "LAN_2_0", "-h", "10.0.1.2:623", "-I", "3", "-W", "opensesspriv",
        f"--config-file={config}", "--session-timeout=6000", "--retransmission-timeout=1000",
        "--stat",
    )  # fmt: skip
    assert ipmipower_command(CONF, config, Action.OFF).argv[-1] == "--off"
    assert ipmipower_config("admin", PASSWORD) == f"username admin\npassword {PASSWORD}\n"


def test_the_agent_reads_its_options_and_the_password_on_stdin() -> None:
    conf = FencingConfig(
        "10.0.1.2", "admin", PWFILE, method="fence-agent", agent="fence_idrac", port=624
    )
    command = agent_command(conf, PASSWORD, Action.OFF, 20)
    assert command.argv == ("fence_idrac",)
    assert command.stdin == (
        "action=off\nip=10.0.1.2\nipport=624\nusername=admin\n"
        f"password={PASSWORD}\nlanplus=1\ncipher=3\npower_timeout=20\n"
    )
    status = agent_command(conf, PASSWORD, Action.STATUS, 20)
    assert status.stdin is not None and status.stdin.startswith("action=status\n")


@pytest.mark.parametrize("action", list(Action))
def test_a_fence_never_cycles_nor_resets(action: Action) -> None:
    assert {a.value for a in Action} == {"status", "off"}
    for argv in (
        ipmitool_command(CONF, action).argv,
        ipmipower_command(CONF, Path("/x"), action).argv,
    ):
        assert not {"cycle", "reset", "on", "--cycle", "--reset", "--on"} & set(argv)


@pytest.mark.parametrize("test", [False, True])
@pytest.mark.parametrize(
    "conf",
    [
        CONF,
        FencingConfig("10.0.1.2", "admin", PWFILE, tool="ipmipower"),
        FencingConfig("10.0.1.2", "admin", PWFILE, method="fence-agent", agent="fence_ipmilan"),
    ],
    ids=["ipmitool", "ipmipower", "agent"],
)
def test_the_dry_run_names_the_password_file(conf: FencingConfig, test: bool) -> None:
    text = "\n".join(planned(conf, test))
    assert str(PWFILE) in text
    assert ("chassis power off" in text or "--off" in text or "action=off" in text) != test


# -- what the answers mean ----------------------------------------------------


@pytest.mark.parametrize(
    ("action", "status", "out", "took", "power", "refused", "problem"),
    [
        (Action.STATUS, 0, "Chassis Power is on\n", 0.04, Power.ON, False, ""),
        (Action.STATUS, 0, "Chassis Power is off\n", 0.04, Power.OFF, False, ""),
        (Action.OFF, 0, "Chassis Power Control: Down/Off\n", 0.04, Power.OFF, False, ""),
        (Action.OFF, 0, "Chassis Power is on\n", 0.04, Power.UNKNOWN, False, "unexpected"),
        (Action.STATUS, 0, "Chassis Power Control: Down/Off\n", 0.04, Power.UNKNOWN, False, ""),
        (Action.STATUS, 1, NO_SESSION, 0.04, Power.UNKNOWN, True, "wrong user or password"),
        (Action.STATUS, 1, NO_SESSION, 6.0, Power.UNKNOWN, False, "did not answer within 6 s"),
        (
            Action.OFF,
            1,
            "RAKP 2 message indicates an error : unauthorized name\n" + NO_SESSION,
            3.0,
            Power.UNKNOWN,
            True,
            "wrong user or password",
        ),
        (Action.STATUS, None, "", 9.5, Power.UNKNOWN, False, "killed after"),
        (Action.STATUS, 1, "Address lookup for bmc2 failed\n", 0.1, Power.UNKNOWN, False, "exit"),
    ],
)
def test_read_ipmitool(
    action: Action,
    status: int | None,
    out: str,
    took: float,
    power: Power,
    refused: bool,
    problem: str,
) -> None:
    reading = read_ipmitool(action, status, out, took, WHERE)
    assert (reading.power, reading.refused) == (power, refused)
    assert problem in reading.problem
    if reading.refused or "answer" in problem:
        assert WHERE in reading.problem


@pytest.mark.parametrize(
    ("action", "status", "out", "power", "refused", "problem"),
    [
        (Action.STATUS, 0, "127.0.0.1: on\n", Power.ON, False, ""),
        (Action.STATUS, 0, "127.0.0.1: off\n", Power.OFF, False, ""),
        (Action.OFF, 0, "127.0.0.1: ok\n", Power.OFF, False, ""),
        (Action.STATUS, 1, "127.0.0.1: password invalid\n", Power.UNKNOWN, True, "password"),
        (
            Action.STATUS,
            1,
            "127.0.0.1: privilege level cannot be obtained for this user\n",
            Power.UNKNOWN,
            True,
            "wrong user",
        ),
        (Action.OFF, 1, "127.0.0.1: connection timeout\n", Power.UNKNOWN, False, "not answer"),
        (Action.STATUS, None, "", Power.UNKNOWN, False, "killed"),
    ],
)
def test_read_ipmipower(
    action: Action, status: int | None, out: str, power: Power, refused: bool, problem: str
) -> None:
    reading = read_ipmipower(action, status, out, 5.0, WHERE)
    assert (reading.power, reading.refused) == (power, refused)
    assert problem in reading.problem


WARNING = (
    "/usr/sbin/fence_ipmilan:5: DeprecationWarning: 'pipes' is deprecated\n"
    "  from pipes import quote\n"
)


@pytest.mark.parametrize(
    ("action", "status", "out", "power"),
    [
        (Action.STATUS, 0, WARNING + "Status: ON\n", Power.ON),
        (Action.STATUS, 2, WARNING + "Status: OFF\n", Power.OFF),
        (Action.OFF, 0, "Success: Powered OFF\n", Power.OFF),
        (
            Action.STATUS,
            1,
            WARNING + "2026 ERROR: Failed: Unable to obtain correct plug status\n",
            Power.UNKNOWN,
        ),
        (Action.OFF, 1, "ERROR: Failed: Timed out waiting to power OFF\n", Power.ON),
        (Action.OFF, 1, "ERROR: Failed: Unable to obtain correct plug status\n", Power.UNKNOWN),
        (Action.STATUS, None, "", Power.UNKNOWN),
    ],
)
def test_read_agent(action: Action, status: int | None, out: str, power: Power) -> None:
    reading = read_agent("fence_ipmilan", action, status, out, 1.0, WHERE)
    assert reading.power is power
    assert "DeprecationWarning" not in reading.problem
    if status == 1:
        assert "ERROR: Failed" in reading.problem


# -- the decision -------------------------------------------------------------

ON = Reading(Power.ON)
OFF = Reading(Power.OFF)
ACCEPTED = Reading(Power.OFF)  # the answer to power off
NO_ANSWER = Reading(Power.UNKNOWN, "the BMC at 10.0.1.2:623 did not answer")
REFUSED = Reading(Power.UNKNOWN, "the BMC refused: wrong user or password", refused=True)


@dataclass
class Script:
    """Answers per action, in order (the last one repeats), each taking
    ``took`` seconds of the fake clock; what was asked, when."""

    answers: dict[Action, list[Reading]]
    took: float = 0.05
    now: float = 1000.0
    asked: list[tuple[float, Action]] = field(default_factory=list)

    def run(self, machine: FenceMachine, steps: int = 10_000) -> Outcome:
        for _ in range(steps):
            step = machine.next(self.now)
            if isinstance(step, Outcome):
                return step
            if isinstance(step, Wait):
                assert step.seconds > 0
                self.now += step.seconds
                continue
            assert isinstance(step, Query)
            self.asked.append((self.now, step.action))
            queue = self.answers[step.action]
            reading = queue.pop(0) if len(queue) > 1 else queue[0]
            if self.took > step.limit_s:  # killed at the limit
                self.now += step.limit_s
                reading = Reading(Power.UNKNOWN, "killed at its limit")
            else:
                self.now += self.took
            machine.record(step.action, reading, self.now)
        raise AssertionError("no outcome")


def test_fenced_once_a_status_read_says_off() -> None:
    script = Script({Action.OFF: [ACCEPTED], Action.STATUS: [ON, ON, OFF]})
    outcome = script.run(FenceMachine(20, script.now))
    assert outcome.ok and outcome.power is Power.OFF
    assert outcome.message.startswith("peer fenced: power off confirmed after ")
    assert [a for _, a in script.asked] == [Action.OFF, *[Action.STATUS] * 3]


def test_the_answer_to_power_off_is_never_trusted() -> None:
    """A stuck relay: power off is accepted, the status stays on."""
    script = Script({Action.OFF: [ACCEPTED], Action.STATUS: [ON]})
    outcome = script.run(FenceMachine(20, script.now))
    assert not outcome.ok
    assert outcome.message.startswith("NOT fenced: the BMC accepted power off but still reports")
    assert "stuck relay" in outcome.advice
    assert script.now - 1000 <= 20 + GRACE_S
    offs = [t for t, a in script.asked if a is Action.OFF]
    assert len(offs) > 1 and all(b - a >= RESEND_S for a, b in itertools.pairwise(offs))


def test_an_agent_that_waited_in_vain_for_the_power_to_go_off() -> None:
    still_on = Reading(Power.ON, "fence_ipmilan: Timed out waiting to power OFF")
    script = Script({Action.OFF: [still_on], Action.STATUS: [ON]}, took=5.0)
    outcome = script.run(FenceMachine(5, script.now))
    assert outcome.message.startswith("NOT fenced: the BMC accepted power off but still reports")
    assert "Timed out waiting" in outcome.message
    assert "stuck relay" in outcome.advice


def test_a_wrong_password_fails_at_once() -> None:
    script = Script({Action.OFF: [REFUSED], Action.STATUS: [ON]})
    outcome = script.run(FenceMachine(20, script.now))
    assert not outcome.ok
    assert outcome.message.startswith("NOT fenced: the BMC refused: wrong user or password")
    assert "password_file" in outcome.advice
    assert len(script.asked) == 1


def test_a_bmc_that_never_answers() -> None:
    script = Script({Action.OFF: [NO_ANSWER], Action.STATUS: [NO_ANSWER]}, took=6.0)
    outcome = script.run(FenceMachine(20, script.now))
    assert not outcome.ok
    assert "NOT fenced: power off failed: the BMC at 10.0.1.2:623 did not answer" in outcome.message
    assert script.now - 1000 <= 20 + GRACE_S
    assert {a for _, a in script.asked} == {Action.OFF}


def test_a_call_that_hangs_is_killed_within_the_bound() -> None:
    script = Script({Action.OFF: [ACCEPTED], Action.STATUS: [ON]}, took=1e6)
    outcome = script.run(FenceMachine(20, script.now))
    assert not outcome.ok
    assert script.now - 1000 <= 20 + GRACE_S


def test_a_bmc_that_comes_back() -> None:
    script = Script({Action.OFF: [NO_ANSWER, NO_ANSWER, ACCEPTED], Action.STATUS: [OFF]})
    outcome = script.run(FenceMachine(20, script.now))
    assert outcome.ok


def test_testing_only_reads() -> None:
    for reading, ok in ((ON, True), (OFF, True), (NO_ANSWER, False), (REFUSED, False)):
        script = Script({Action.OFF: [ACCEPTED], Action.STATUS: [reading]})
        outcome = script.run(FenceMachine(20, script.now, test=True))
        assert outcome.ok is ok
        assert [a for _, a in script.asked] == [Action.STATUS]
        if ok:
            assert outcome.message == f"the peer's power is {reading.power.value}"
        else:
            assert outcome.message.startswith("power state NOT read: ")


readings = st.sampled_from([ON, OFF, NO_ANSWER, REFUSED, Reading(Power.UNKNOWN, "odd")])


@settings(max_examples=300, deadline=None)
@given(
    offs=st.lists(readings, min_size=1, max_size=8),
    statuses=st.lists(readings, min_size=1, max_size=8),
    took=st.floats(0.0, 40.0),
    timeout=st.floats(1.0, 60.0),
    test=st.booleans(),
)
def test_any_answers(
    offs: Sequence[Reading], statuses: Sequence[Reading], took: float, timeout: float, test: bool
) -> None:
    """Decided within timeout + GRACE_S; fenced only after a status read
    said off following a power off; testing never powers off."""
    script = Script({Action.OFF: list(offs), Action.STATUS: list(statuses)}, took=took)
    machine = FenceMachine(timeout, script.now, test=test)
    outcome = script.run(machine)
    assert script.now - 1000 <= timeout + GRACE_S
    assert machine.next(script.now) == outcome
    if test:
        assert [a for _, a in script.asked] == [Action.STATUS]
        return
    assert script.asked[0][1] is Action.OFF
    if outcome.ok:
        assert outcome.power is Power.OFF
        assert script.asked[-1][1] is Action.STATUS
        assert OFF in statuses
    else:
        assert outcome.message.startswith("NOT fenced: ")
        assert outcome.advice


# -- the shell, with a recording runner --------------------------------------


@dataclass
class Recorder:
    """A runner that answers like the simulator, and a clock it moves."""

    tool: str
    power: str = "on"
    now: float = 0.0
    calls: list[tuple[list[str], str | None]] = field(default_factory=list)
    config_seen: list[tuple[str, int, int]] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def run(self, argv: Sequence[str], stdin: str | None, limit: float) -> tuple[int | None, str]:
        self.calls.append((list(argv), stdin))
        self.now += 0.05
        config = [a.split("=", 1)[1] for a in argv if a.startswith("--config-file=")]
        if config:
            path = Path(config[0])
            self.config_seen.append(
                (
                    path.read_text(),
                    stat.S_IMODE(path.stat().st_mode),
                    stat.S_IMODE(path.parent.stat().st_mode),
                )
            )
        off = "off" in argv or "--off" in argv or (stdin or "").startswith("action=off")
        if off:
            self.power = "off"
        if self.tool == "ipmitool":
            return (
                0,
                "Chassis Power Control: Down/Off\n" if off else f"Chassis Power is {self.power}\n",
            )
        if self.tool == "ipmipower":
            return 0, "127.0.0.1: ok\n" if off else f"127.0.0.1: {self.power}\n"
        if off:
            return 0, "Success: Powered OFF\n"
        return (2, "Status: OFF\n") if self.power == "off" else (0, "Status: ON\n")


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "pw"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("tool", ["ipmitool", "ipmipower", "fence_ipmilan"])
@pytest.mark.parametrize("test", [False, True])
def test_the_shell(password_file: Path, tool: str, test: bool) -> None:
    if tool == "fence_ipmilan":
        conf = FencingConfig(
            "127.0.0.1", "u", password_file, method="fence-agent", agent="fence_ipmilan"
        )
    else:
        conf = FencingConfig("127.0.0.1", "u", password_file, tool=tool)
    fake = Recorder("agent" if tool == "fence_ipmilan" else tool)
    outcome = shell.fence(conf, test=test, run=fake.run, clock=fake.clock, sleep=fake.sleep)
    assert outcome.ok
    assert fake.power == ("on" if test else "off")
    assert outcome.message == (
        "the peer's power is on" if test else "peer fenced: power off confirmed after 0.1 s"
    )
    for argv, stdin in fake.calls:
        assert argv[0] == tool
        assert not any(PASSWORD in arg for arg in argv)
        if tool == "fence_ipmilan":
            assert stdin is not None and f"password={PASSWORD}\n" in stdin
        else:
            assert stdin is None
    if tool == "ipmipower":
        assert fake.config_seen
        for text, mode, dir_mode in fake.config_seen:
            assert (text, mode, dir_mode) == (f"username u\npassword {PASSWORD}\n", 0o600, 0o700)
        config = next(a for a in fake.calls[0][0] if a.startswith("--config-file="))
        assert not Path(config.split("=", 1)[1]).parent.exists()  # removed after


def test_an_empty_password_file(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("\n")
    conf = FencingConfig("127.0.0.1", "u", path, tool="ipmipower")
    with pytest.raises(ConfigError, match="is empty"):
        shell.fence(conf, run=Recorder("ipmipower").run)


@pytest.mark.parametrize("password", ["a b", "a#b", "a\tb"])
def test_ipmipower_cannot_carry_every_password(tmp_path: Path, password: str) -> None:
    path = tmp_path / "pw"
    path.write_text(password + "\n")
    path.chmod(0o600)
    fake = Recorder("ipmipower")
    with pytest.raises(ConfigError, match="use tool: ipmitool"):
        shell.fence(FencingConfig("127.0.0.1", "u", path, tool="ipmipower"), run=fake.run)
    assert fake.calls == []
    conf = FencingConfig("127.0.0.1", "u", path)
    assert shell.fence(conf, run=Recorder("ipmitool").run, clock=fake.clock, sleep=fake.sleep).ok


def test_the_real_runner_kills_at_the_limit() -> None:
    status, _ = shell.run_command(["sh", "-c", "sleep 30 & sleep 30"], None, 0.3)
    assert status is None
    assert shell.run_command(["sh", "-c", "cat; exit 3"], "in\n", 5) == (3, "in\n")


def test_a_missing_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FenceToolMissing, match="apt-get install freeipmi-tools") as info:
        shell.run_command(["ipmipower"], None, 1)
    assert isinstance(info.value, FencingError)
    assert info.value.exit_code == 10
