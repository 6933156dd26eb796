"""``bmsync ha fence``: --dry-run prints the commands (the password file's
path, never the password); the exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import bmsync.cli.ha
from bmsync.cli.main import main
from bmsync.ha.fence_tools import Power
from bmsync.ha.fencing import Outcome

PASSWORD = "n0t-in-any-output"


def config(tmp_path: Path, *fencing: str) -> Path:
    password_file = tmp_path / "ipmi-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    lines = ["address: 10.0.1.2", "user: admin", f"password_file: {password_file}", *fencing]
    path = tmp_path / "bmsync.yaml"
    body = "".join(f"    {line}\n" for line in lines)
    path.write_text(f"node: bm1\nstate_dir: {tmp_path}\nha:\n  fencing:\n{body}")
    return path


@pytest.mark.parametrize(
    "fencing",
    [(), ("tool: ipmipower",), ("method: fence-agent", "agent: fence_idrac")],
    ids=["ipmitool", "ipmipower", "agent"],
)
@pytest.mark.parametrize("test", [False, True])
def test_dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fencing: tuple[str, ...], test: bool
) -> None:
    conf = config(tmp_path, *fencing)
    words = ["-c", str(conf), "ha", "fence", "--dry-run", *(["--test"] if test else [])]
    assert main(words) == 0
    out = capsys.readouterr().out
    assert PASSWORD not in out
    assert str(tmp_path / "ipmi-password") in out
    if not fencing:
        assert "ipmitool -I lanplus -C 3 -H 10.0.1.2 -p 623 -U admin -f" in out
        assert out.count("chassis power off") == (0 if test else 1)
        assert "chassis power status" in out


def test_no_fencing_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bmsync.yaml"
    path.write_text("node: bm1\n")
    assert main(["-c", str(path), "ha", "fence"]) == 2
    assert "no 'ha.fencing' section" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("outcome", "test", "code", "said"),
    [
        (Outcome(True, Power.OFF, "peer fenced: power off confirmed after 1.2 s"), False, 0, ""),
        (Outcome(True, Power.ON, "the peer's power is on"), True, 0, "credentials accepted"),
        (
            Outcome(False, Power.UNKNOWN, "NOT fenced: the BMC still reports on", "pull the plug"),
            False,
            10,
            "bmsync: error: NOT fenced: the BMC still reports on; pull the plug",
        ),
    ],
)
def test_exit_codes(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    outcome: Outcome,
    test: bool,
    code: int,
    said: str,
) -> None:
    asked: list[dict[str, Any]] = []

    def fake(conf: Any, **kwargs: Any) -> Outcome:
        asked.append(kwargs)
        return outcome

    monkeypatch.setattr(bmsync.cli.ha, "run_fence", fake)
    words = ["-c", str(config(tmp_path)), "ha", "fence", *(["--test"] if test else [])]
    assert main(words) == code
    assert asked == [{"test": test}]
    captured = capsys.readouterr()
    assert said in captured.out + captured.err
    if outcome.ok:
        assert captured.out.startswith(outcome.message)
