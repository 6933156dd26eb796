"""contrib/bmsync.service is a unit systemd accepts, of Type=notify, and
what it runs is a command that exists."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).parents[2] / "contrib" / "bmsync.service"


def test_unit_verifies_with_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd"
    text = UNIT.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "Restart=on-failure" in text
    # the installed path (README) does not exist in a checkout: point it at this bmsync
    local = tmp_path / "bmsync.service"
    local.write_text(text.replace("/usr/local/bin/bmsync", f"{sys.executable} -m bmsync"))
    done = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_unit_command_line_parses() -> None:
    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("ExecStart="))
    args = line.removeprefix("ExecStart=/usr/local/bin/bmsync ").split()
    assert args[-1] == "run"
    # everything before `run` is accepted by bmsync's own parser
    done = subprocess.run(
        [sys.executable, "-m", "bmsync", *args[:-1], "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_unit_runs_the_path_the_readme_installs() -> None:
    """The README's install recipe links bmsync into /usr/local/bin and the
    forced command names that path; the unit must run the same file."""
    readme = (UNIT.parents[1] / "README.md").read_text()
    assert "ln -s /opt/bmsync/bin/bmsync /usr/local/bin/bmsync" in readme
    assert 'command="/usr/local/bin/bmsync agent",restrict' in readme
    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("ExecStart="))
    assert line.split()[0] == "ExecStart=/usr/local/bin/bmsync"
