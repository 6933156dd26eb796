"""``ha.fencing``: how this node powers its peer off; the password file must
be root's alone, and every error names the file, the line and the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bmsync.config.model import FencingConfig
from bmsync.config.parse import parse
from bmsync.core.errors import ConfigError

SOURCE = Path("/etc/bmsync/bmsync.yaml")


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "ipmi-password"
    path.write_text("secret\n")
    path.chmod(0o600)
    return path


def text(password_file: Path, *lines: str) -> str:
    base = ["address: 10.0.1.2", "user: admin", f"password_file: {password_file}"]
    body = "".join(f"    {line}\n" for line in [*base, *lines])
    return f"node: bm1\nha:\n  fencing:\n{body}"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, SOURCE)
    return str(info.value)


def test_the_defaults(password_file: Path) -> None:
    fencing = parse(text(password_file), SOURCE).ha.fencing
    assert fencing == FencingConfig(address="10.0.1.2", user="admin", password_file=password_file)
    assert (fencing.method, fencing.tool, fencing.port, fencing.interface) == (
        "ipmi",
        "ipmitool",
        623,
        "lanplus",
    )
    assert (fencing.cipher_suite, fencing.timeout_s, fencing.retries) == (3, 20.0, 2)
    assert parse("node: bm1\n", SOURCE).ha.fencing is None


def test_every_key(password_file: Path) -> None:
    fencing = parse(
        text(
            password_file,
            "method: fence-agent",
            "agent: fence_idrac",
            "tool: ipmipower",
            "port: 6230",
            "interface: lan",
            "cipher_suite: 17",
            "timeout_s: 30",
            "retries: 1",
        ),
        SOURCE,
    ).ha.fencing
    assert fencing is not None
    assert (fencing.method, fencing.agent, fencing.tool) == (
        "fence-agent",
        "fence_idrac",
        "ipmipower",
    )
    assert (fencing.port, fencing.interface, fencing.cipher_suite) == (6230, "lan", 17)
    assert (fencing.timeout_s, fencing.retries) == (30.0, 1)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666])
def test_a_password_file_others_may_read_or_write(password_file: Path, mode: int) -> None:
    password_file.chmod(mode)
    message = error_of(text(password_file))
    assert f"{SOURCE} line 6: ha.fencing.password_file:" in message
    assert f"mode {mode:04o}" in message
    assert f"chmod 600 {password_file}" in message


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_a_private_password_file(password_file: Path, mode: int) -> None:
    password_file.chmod(mode)
    assert parse(text(password_file), SOURCE).ha.fencing is not None


def test_a_missing_password_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    message = error_of(text(missing))
    assert f"line 6: ha.fencing.password_file: file {missing} does not exist" in message
    assert f"chmod 600 {missing}" in message


def test_a_password_file_that_is_a_directory(tmp_path: Path) -> None:
    message = error_of(text(tmp_path))
    assert f"line 6: ha.fencing.password_file: {tmp_path} is not a regular file" in message


def test_a_password_file_that_is_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    assert "is not a regular file" in error_of(text(fifo))


def test_a_relative_password_file() -> None:
    assert "ha.fencing.password_file: 'pw' is a relative path" in error_of(text(Path("pw")))


def test_fence_agent_needs_an_agent(password_file: Path) -> None:
    message = error_of(text(password_file, "method: fence-agent"))
    assert f"{SOURCE} line 4: ha.fencing.agent: missing" in message


@pytest.mark.parametrize(
    "agent", ["fence-idrac", "idrac", "fence_", "fence_iDRAC", "/usr/sbin/fence_x"]
)
def test_a_bad_agent_name(password_file: Path, agent: str) -> None:
    message = error_of(text(password_file, "method: fence-agent", f"agent: '{agent}'"))
    assert "line 8: ha.fencing.agent:" in message
    assert "fence_[a-z0-9_]+" in message


def test_an_agent_without_its_method(password_file: Path) -> None:
    message = error_of(text(password_file, "agent: fence_idrac"))
    assert "line 7: ha.fencing.agent: only read with method fence-agent" in message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("method: ssh", "ha.fencing.method: 'ssh' is not one of: ipmi, fence-agent"),
        ("tool: ipmiutil", "ha.fencing.tool: 'ipmiutil' is not one of: ipmitool, ipmipower"),
        ("interface: open", "ha.fencing.interface: 'open' is not one of: lanplus, lan"),
        ("port: 0", "ha.fencing.port: 0 is out of range"),
        ("cipher_suite: 18", "ha.fencing.cipher_suite: 18 is out of range"),
        ("timeout_s: 0", "ha.fencing.timeout_s: 0.0 is out of range"),
        ("retries: 0", "ha.fencing.retries: 0 is out of range"),
        ("retries: 6", "ha.fencing.retries: 6 is out of range"),
        ("pasword_file: /x", "ha.fencing.pasword_file: unknown key; did you mean 'password_file'?"),
    ],
)
def test_bad_values(password_file: Path, line: str, expected: str) -> None:
    message = error_of(text(password_file, line))
    assert f"{SOURCE} line 7: {expected}" in message


@pytest.mark.parametrize(
    ("key", "value"), [("address", "-oProxyCommand=x"), ("address", "a b"), ("user", "-x")]
)
def test_no_option_smuggled_onto_a_command_line(tmp_path: Path, key: str, value: str) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text("p")
    password_file.chmod(0o600)
    lines = {"address": "10.0.1.2", "user": "admin", key: value}
    body = "".join(f"    {k}: '{v}'\n" for k, v in lines.items())
    message = error_of(f"node: bm1\nha:\n  fencing:\n{body}    password_file: {password_file}\n")
    assert f"ha.fencing.{key}:" in message


@pytest.mark.parametrize("missing", ["address", "user", "password_file"])
def test_required_keys(password_file: Path, missing: str) -> None:
    lines = {"address": "10.0.1.2", "user": "admin", "password_file": str(password_file)}
    del lines[missing]
    body = "".join(f"    {k}: {v}\n" for k, v in lines.items())
    message = error_of(f"node: bm1\nha:\n  fencing:\n{body}")
    assert f"line 4: ha.fencing.{missing}: missing; this key is required" in message
