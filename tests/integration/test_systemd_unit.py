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
    # the packaged path does not exist in a checkout: point it at this bmsync
    local = tmp_path / "bmsync.service"
    local.write_text(text.replace("/usr/bin/bmsync", f"{sys.executable} -m bmsync"))
    done = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_unit_command_line_parses() -> None:
    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("ExecStart="))
    args = line.removeprefix("ExecStart=/usr/bin/bmsync ").split()
    assert args[-1] == "run"
    # everything before `run` is accepted by bmsync's own parser
    done = subprocess.run(
        [sys.executable, "-m", "bmsync", *args[:-1], "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
