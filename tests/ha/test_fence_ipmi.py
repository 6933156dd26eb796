"""``bmsync ha fence`` against a simulated BMC: OpenIPMI's ipmi_sim on
127.0.0.1 (a free UDP port), whose chassis script keeps the machine's
power in a file (tests/ha/ipmi_sim). With ipmitool, freeIPMI's ipmipower
and Debian's fence_ipmilan: the fence powers the chassis off and confirms
it; --test leaves it on; a wrong password, a frozen BMC (SIGSTOP) and a
stuck relay each end "NOT fenced" with the reason. The password is in no
argv bmsync runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from bmsync.config.model import FencingConfig
from bmsync.ha import fence as shell
from bmsync.ha.fence_tools import Action, agent_command
from bmsync.ha.fencing import Outcome

SIM_FILES = Path(__file__).parent / "ipmi_sim"
PASSWORD = "p"  # lan.conf's user "u"
TOOLS = ("ipmi_sim", "ipmitool")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Bmc:
    """A running ipmi_sim, stopped by its pid."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes]
    password_file: Path
    frozen: bool = False
    argvs: list[list[str]] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.directory / "power.state"

    def power(self) -> str:
        return {"1": "on", "0": "off"}[self.state.read_text().strip()]

    def power_changes(self) -> list[str]:
        log = self.directory / "power.state.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [line for line in lines if " set " in line]

    def stick(self) -> None:
        """The relay: power changes are ignored, "Down/Off" still answered."""
        (self.directory / "power.state.stuck").touch()

    def freeze(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def conf(self, **changes: object) -> FencingConfig:
        base = FencingConfig(
            address="127.0.0.1",
            port=self.port,
            user="u",
            password_file=self.password_file,
            timeout_s=5,
            retries=1,
        )
        return replace(base, **changes)  # type: ignore[arg-type]

    def fence(self, conf: FencingConfig, test: bool = False) -> Outcome:
        """bmsync's fence, through a runner that records every argv."""

        def recording(
            argv: Sequence[str], stdin: str | None, limit: float
        ) -> tuple[int | None, str]:
            self.argvs.append(list(argv))
            return shell.run_command(argv, stdin, limit)

        started = time.monotonic()
        outcome = shell.fence(conf, test=test, run=recording)
        took = time.monotonic() - started
        how = conf.agent if conf.method == "fence-agent" else conf.tool
        print(f"\n[{how} test={test}] {outcome.message}")
        if outcome.advice:
            print(f"  advice: {outcome.advice}")
        print(f"  ({took:.1f} s, {len(self.argvs)} commands)")
        for argv in self.argvs:
            assert not any(arg == PASSWORD or f"={PASSWORD}" in arg for arg in argv), argv
            assert "-P" not in argv
        return outcome


def _ready(bmc: Bmc, deadline_s: float) -> None:
    argv = [
        "ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(bmc.port),
        "-U", "u", "-f", str(bmc.password_file), "-N", "1", "-R", "1",
        "chassis", "power", "status",
    ]  # fmt: skip
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert bmc.process.poll() is None, (bmc.directory / "sim.log").read_text()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if "Chassis Power is" in done.stdout:
            return
        time.sleep(0.2)
    raise AssertionError(f"ipmi_sim did not answer: {(bmc.directory / 'sim.log').read_text()}")


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[Bmc]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed (apt-get install openipmi ipmitool "
            "freeipmi-tools fence-agents)"
        )
    directory = tmp_path / "bmc"
    directory.mkdir()
    port = free_udp_port()
    lan = (SIM_FILES / "lan.conf").read_text()
    lan = lan.replace("SIMDIR", str(directory)).replace("127.0.0.1 9624", f"127.0.0.1 {port}")
    (directory / "lan.conf").write_text(lan)
    shutil.copy(SIM_FILES / "sim.emu", directory / "sim.emu")
    shutil.copy(SIM_FILES / "chassis.sh", directory / "chassis.sh")
    (directory / "chassis.sh").chmod(0o755)
    (directory / "state").mkdir()
    password_file = tmp_path / "ipmi-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    with (directory / "sim.log").open("wb") as log:
        process = subprocess.Popen(
            [
                "ipmi_sim",
                "-c",
                str(directory / "lan.conf"),
                "-f",
                str(directory / "sim.emu"),
                "-s",
                str(directory / "state"),
                "-n",
                "-p",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    bmc = Bmc(directory, port, process, password_file)
    try:
        _ready(bmc, 15)
        bmc.argvs.clear()
        yield bmc
    finally:
        if bmc.frozen:
            os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        package = "freeipmi-tools" if tool == "ipmipower" else "fence-agents"
        pytest.skip(f"{tool} not installed (apt-get install {package})")


@pytest.mark.parametrize("tool", ["ipmitool", "ipmipower"])
def test_fence_powers_the_peer_off_and_confirms(bmc: Bmc, tool: str) -> None:
    need(tool)
    assert bmc.power() == "on"
    outcome = bmc.fence(bmc.conf(tool=tool))
    assert outcome.ok
    assert outcome.message.startswith("peer fenced: power off confirmed after ")
    assert bmc.power() == "off"
    assert [argv[0] for argv in bmc.argvs] == [tool] * len(bmc.argvs)


@pytest.mark.parametrize("tool", ["ipmitool", "ipmipower"])
def test_test_only_reads_the_power_state(bmc: Bmc, tool: str) -> None:
    need(tool)
    outcome = bmc.fence(bmc.conf(tool=tool), test=True)
    assert outcome.ok
    assert outcome.message == "the peer's power is on"
    assert bmc.power() == "on"
    assert bmc.power_changes() == []
    assert len(bmc.argvs) == 1


@pytest.mark.parametrize("tool", ["ipmitool", "ipmipower"])
def test_a_wrong_password(bmc: Bmc, tool: str, tmp_path: Path) -> None:
    need(tool)
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-p\n")
    wrong.chmod(0o600)
    outcome = bmc.fence(bmc.conf(tool=tool, password_file=wrong))
    assert not outcome.ok
    assert outcome.message.startswith("NOT fenced: ")
    assert "wrong user or password" in outcome.message
    assert "password_file" in outcome.advice
    assert bmc.power() == "on"
    assert not any("not-p" in arg for argv in bmc.argvs for arg in argv)


@pytest.mark.parametrize("tool", ["ipmitool", "ipmipower"])
def test_a_frozen_bmc(bmc: Bmc, tool: str) -> None:
    need(tool)
    bmc.freeze()
    outcome = bmc.fence(bmc.conf(tool=tool, timeout_s=3))
    assert not outcome.ok
    assert outcome.message.startswith("NOT fenced: power off failed: the BMC at 127.0.0.1:")
    assert "did not answer" in outcome.message


@pytest.mark.parametrize("tool", ["ipmitool", "ipmipower"])
def test_a_stuck_relay(bmc: Bmc, tool: str) -> None:
    need(tool)
    bmc.stick()
    outcome = bmc.fence(bmc.conf(tool=tool, timeout_s=3))
    assert not outcome.ok
    assert outcome.message.startswith(
        "NOT fenced: the BMC accepted power off but still reports the power on"
    )
    assert "stuck relay" in outcome.advice
    assert bmc.power() == "on"
    assert bmc.power_changes()  # power off was sent, and answered


def test_ipmitool_is_never_given_the_password(
    bmc: Bmc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ipmitool really received: a recording wrapper first on PATH."""
    real = shutil.which("ipmitool")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "ipmitool.argv"
    wrapper = bin_dir / "ipmitool"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {seen}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert bmc.fence(bmc.conf()).ok
    calls = seen.read_text().splitlines()
    assert len(calls) >= 2
    for call in calls:
        assert f"-f {bmc.password_file}" in call
        assert PASSWORD not in call.split()
        assert "-P" not in call.split()


def test_fence_agent_fence_ipmilan(bmc: Bmc) -> None:
    need("fence_ipmilan")
    conf = bmc.conf(method="fence-agent", agent="fence_ipmilan", timeout_s=20)
    tested = bmc.fence(conf, test=True)
    assert tested.ok
    assert tested.message == "the peer's power is on"
    assert bmc.power_changes() == []
    outcome = bmc.fence(conf)
    assert outcome.ok
    assert outcome.message.startswith("peer fenced: power off confirmed after ")
    assert bmc.power() == "off"
    assert {argv[0] for argv in bmc.argvs} == {"fence_ipmilan"}
    assert all(argv == ["fence_ipmilan"] for argv in bmc.argvs)


def test_fence_ipmilan_itself_gives_ipmitool_the_password_with_dash_p(
    bmc: Bmc, tmp_path: Path
) -> None:
    """Why method: ipmi is the default for IPMI BMCs: fence_ipmilan reads
    the password on stdin, then runs ipmitool with -P PASSWORD, which ps
    shows for the call's duration (seen through its ipmitool_path option)."""
    need("fence_ipmilan")
    seen = tmp_path / "ipmitool.argv"
    wrapper = tmp_path / "ipmitool"
    wrapper.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {seen}\nexec {shutil.which("ipmitool")} "$@"\n'
    )
    wrapper.chmod(0o755)
    conf = bmc.conf(method="fence-agent", agent="fence_ipmilan")
    command = agent_command(conf, PASSWORD, Action.STATUS, 5)
    assert command.stdin is not None
    status, out = shell.run_command(command.argv, command.stdin + f"ipmitool_path={wrapper}\n", 30)
    assert status == 0, out
    calls = seen.read_text().splitlines()
    print(f"\nfence_ipmilan ran: {calls[0]}")
    assert all(f"-P {PASSWORD}" in call for call in calls)


def test_fence_agent_with_a_wrong_password(bmc: Bmc, tmp_path: Path) -> None:
    need("fence_ipmilan")
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-p\n")
    wrong.chmod(0o600)
    conf = bmc.conf(method="fence-agent", agent="fence_ipmilan", password_file=wrong, timeout_s=3)
    outcome = bmc.fence(conf)
    assert not outcome.ok
    assert outcome.message.startswith("NOT fenced: power off failed: fence_ipmilan failed")
    assert bmc.power() == "on"


def test_fence_agent_with_a_stuck_relay(bmc: Bmc) -> None:
    need("fence_ipmilan")
    bmc.stick()
    outcome = bmc.fence(bmc.conf(method="fence-agent", agent="fence_ipmilan", timeout_s=3))
    assert not outcome.ok
    assert outcome.message.startswith(
        "NOT fenced: the BMC accepted power off but still reports the power on"
    )
    assert "stuck relay" in outcome.advice
    assert bmc.power() == "on"


def test_the_command_line(bmc: Bmc, tmp_path: Path) -> None:
    """``bmsync ha fence`` itself: --test, --dry-run, the fence, and exit 10
    when it cannot be confirmed."""
    config = tmp_path / "bmsync.yaml"

    def write(password_file: Path) -> None:
        config.write_text(
            f"node: bm1\nstate_dir: {tmp_path}\nha:\n  fencing:\n    address: 127.0.0.1\n"
            f"    port: {bmc.port}\n    user: u\n    password_file: {password_file}\n"
            "    timeout_s: 5\n    retries: 1\n"
        )

    def bmsync(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "bmsync", "-c", str(config), "ha", "fence", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        print(f"\n$ bmsync ha fence {' '.join(args)}  -> exit {done.returncode}")
        print(done.stdout.rstrip() or "", done.stderr.rstrip() or "", sep="\n")
        return done

    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-p\n")
    wrong.chmod(0o600)
    write(wrong)
    done = bmsync()
    assert done.returncode == 10
    assert "bmsync: error: NOT fenced:" in done.stderr
    write(bmc.password_file)
    done = bmsync("--dry-run")
    assert done.returncode == 0
    assert str(bmc.password_file) in done.stdout
    assert bmc.power_changes() == []
    done = bmsync("--test")
    assert (done.returncode, bmc.power()) == (0, "on")
    assert done.stdout.startswith("the peer's power is on")
    done = bmsync()
    assert done.returncode == 0
    assert done.stdout.startswith("peer fenced: power off confirmed after ")
    assert bmc.power() == "off"


def test_status_reads_the_peer_power_and_flags_a_bmc_it_cannot_read(
    bmc: Bmc, tmp_path: Path
) -> None:
    config = tmp_path / "bmsync.yaml"
    config.write_text(
        f"node: bm1\nstate_dir: {tmp_path}\nha:\n  fencing:\n    address: 127.0.0.1\n"
        f"    port: {bmc.port}\n    user: u\n    password_file: {bmc.password_file}\n"
        "    timeout_s: 5\n    retries: 1\n"
    )

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bmsync", "-c", str(config), "ha", "status", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = status()
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["peer_power"]["power"] == "on"
    assert bmc.power_changes() == []  # only read
    bmc.freeze()
    done = status()
    assert done.returncode == 10
    report = json.loads(done.stdout)
    assert report["peer_power"]["read"] is False
    assert any("the peer's BMC cannot be read" in p for p in report["problems"])
