"""`bmsync ha services start|stop|check` with real shell commands: in
order, stopping at the first failure, a command past its time limit killed
with what it started, every output logged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bmsync.core.errors import HaRefused
from tests.sshd import write_config


def configure(tmp_path: Path, start: list[str], stop: list[str], check: list[str]) -> Path:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)

    def listed(commands: list[str]) -> str:
        return "[" + ", ".join('"' + c.replace('"', '\\"') + '"' for c in commands) + "]"

    services = ("ha:", "  services:", f"    start: {listed(start)}", f"    stop: {listed(stop)}")
    services += (f"    check: {listed(check)}", "    timeout_s: 1")
    return write_config(tmp_path / "bm1.yaml", "bm1", root, tmp_path / "state", extra_top=services)


def bmsync(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bmsync", "-c", str(conf), "--log-level", "info", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=conf.parent,
    )


def test_start_runs_the_commands_in_order(tmp_path: Path) -> None:
    conf = configure(tmp_path, ["echo one >> order", "echo two >> order"], ["true"], [])
    done = bmsync(conf, "ha", "services", "start")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "order").read_text() == "one\ntwo\n"
    assert done.stdout.splitlines()[0].startswith("'echo one >> order': ok in ")
    assert "service_command" in done.stderr and "step=start" in done.stderr


def test_a_failing_start_stops_there_and_says_what_it_printed(tmp_path: Path) -> None:
    conf = configure(tmp_path, ["echo boom; exit 3", "touch second"], ["true"], [])
    done = bmsync(conf, "ha", "services", "start")
    assert done.returncode == HaRefused.exit_code, done.stdout + done.stderr
    assert "ha.services.start: 'echo boom; exit 3': exit status 3 after" in done.stderr
    assert "(boom); 1 command(s) after it not run" in done.stderr
    assert "run 'bmsync ha services start' again" in done.stderr
    assert not (tmp_path / "second").exists()


def test_a_command_past_its_limit_is_killed_with_what_it_started(tmp_path: Path) -> None:
    hang = "sleep 600 & echo $! > child.pid; wait"
    conf = configure(tmp_path, ["true"], [hang], [])
    done = bmsync(conf, "ha", "services", "stop")
    assert done.returncode == HaRefused.exit_code, done.stdout + done.stderr
    assert f"'{hang}': still running after 1 s: killed" in done.stderr
    child = int((tmp_path / "child.pid").read_text())
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return "gone"


def test_check_runs_every_command_and_lists_the_failures(tmp_path: Path) -> None:
    conf = configure(tmp_path, ["true"], ["true"], ["exit 1", "touch checked"])
    done = bmsync(conf, "ha", "services", "check")
    assert done.returncode == HaRefused.exit_code, done.stdout + done.stderr
    assert "'exit 1': exit status 1" in done.stderr and "(1 of 2 check(s) failed)" in done.stderr
    assert (tmp_path / "checked").exists()  # the next check ran all the same


def test_dry_run_prints_the_commands_and_runs_none(tmp_path: Path) -> None:
    conf = configure(tmp_path, ["touch started", "bmctl start"], ["true"], [])
    done = bmsync(conf, "ha", "services", "start", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "/bin/sh -c 'touch started'",
        "/bin/sh -c 'bmctl start'",
    ]
    assert not (tmp_path / "started").exists()


def test_no_services_section_is_a_config_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    conf = write_config(tmp_path / "bm1.yaml", "bm1", root, tmp_path / "state")
    done = bmsync(conf, "ha", "services", "check")
    assert done.returncode == 2
    assert "no 'ha: services:' section" in done.stderr


def test_an_unknown_step_is_a_usage_error(tmp_path: Path) -> None:
    conf = configure(tmp_path, ["true"], ["true"], [])
    done = bmsync(conf, "ha", "services", "begin")
    assert done.returncode == 2
    assert "invalid choice" in done.stderr
