"""The command line as an administrator meets it: exit codes, messages that
name the file, line and key, and nothing written on bad input."""

from __future__ import annotations

import argparse
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from bmsync import __version__
from tests.integration.conftest import Pair


def bmsync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bmsync", *args], capture_output=True, text=True, timeout=60
    )


def test_version() -> None:
    done = bmsync("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"bmsync {__version__}"


def test_usage_errors_exit_2_and_say_what_is_wrong() -> None:
    done = bmsync("resinc")
    assert done.returncode == 2
    assert "invalid choice: 'resinc'" in done.stderr
    done = bmsync("resync", "--dry-rn")
    assert done.returncode == 2 and "unrecognized arguments: --dry-rn" in done.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    done = bmsync("-c", str(tmp_path / "nope.yaml"), "verify")
    assert done.returncode == 2
    assert f"{tmp_path / 'nope.yaml'}: no such file" in done.stderr


def test_bad_configs_name_file_line_and_key_and_write_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    state = tmp_path / "state"
    cases = {
        "node: bm1\nsync:\n  root: [unclosed\n": "line 4: not valid YAML",
        f"node: bm1\nstate_dir: {state}\nsync:\n  root: {root}\n  paths_: []\n": (
            "line 5: sync.paths_: unknown key; did you mean 'paths'?"
        ),
        "node: bm1\npeer:\n  host: x\n  port: ssh\n": (
            "line 4: peer.port: expected an integer, got 'ssh'"
        ),
        "node: bm1\nstate_dir: var/lib/bmsync\n": (
            "line 2: state_dir: 'var/lib/bmsync' is a relative"
        ),
        "node: bm1\nsync:\n  root: /\n  paths: ['/etc', '/']\n": (
            "line 4: sync.paths: '/' with root '/' would sync the whole system"
        ),
        f"node: bm1\nsync:\n  root: {root}\n  exclude: ['[oops']\n": (
            "line 4: sync.exclude[0]: exclude pattern '[oops' has an unclosed '['"
        ),
    }
    for text, message in cases.items():
        conf = tmp_path / "bmsync.yaml"
        conf.write_text(text)
        for command in (["resync"], ["verify"], ["config", "check"]):
            done = bmsync("-c", str(conf), *command)
            assert done.returncode == (1 if command[0] == "config" else 2), done.stderr
            assert f"{conf} {message}" in done.stderr, done.stderr
    assert not state.exists()
    assert list(root.iterdir()) == []


def test_resync_without_a_peer_section(tmp_path: Path) -> None:
    conf = tmp_path / "bmsync.yaml"
    conf.write_text(f"node: bm1\nstate_dir: {tmp_path / 's'}\nsync:\n  root: {tmp_path}\n")
    done = bmsync("-c", str(conf), "resync")
    assert done.returncode == 2
    assert "no 'peer:' section" in done.stderr


def test_config_check_prints_every_rule_with_its_reason(pair: Pair) -> None:
    pair.configure(preset="bluemind", paths=("/srv/extra",), exclude=("!/etc/hosts",))
    done = pair.bmsync("config", "check")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "valid" in out.splitlines()[0]
    assert "/usr/share/bm-elasticsearch/config/elasticsearch.yml" in out
    assert "/var/lib/bm-ca/ca-cert.pem" in out
    assert "/srv/extra" in out and "added in sync.paths" in out
    for pattern, reason in [
        ("/etc/hostname", "this node's own name"),
        ("/etc/ssh/ssh_host_*", "SSH host keys"),
        ("!/etc/hosts", "added in sync.exclude"),
        ("*.dpkg-new", "dpkg"),
    ]:
        line = next(x for x in out.splitlines() if x.strip().startswith(pattern + " "))
        assert reason in line
    as_json = json.loads(pair.bmsync("config", "check", "--json").stdout)
    reasons = {e["pattern"]: e["reason"] for e in as_json["exclude"]}
    assert "unique id" in reasons["/etc/machine-id"]
    assert as_json["paths"][0] == {"path": "/etc", "reason": "system and BlueMind configuration"}


def test_state_dir_is_created_private(pair: Pair) -> None:
    (pair.active / "etc").mkdir()
    assert pair.bmsync("resync").returncode == 0
    for state in (pair.base / "state1", pair.base / "state2"):
        assert state.is_dir() and state.stat().st_mode & 0o777 == 0o700


def test_progress_bar_on_a_terminal_and_plain_lines_otherwise(pair: Pair) -> None:
    etc = pair.active / "etc"
    etc.mkdir()
    for i in range(30):
        (etc / f"f{i}.conf").write_text(f"{i}\n")
    plain = pair.bmsync("resync", "--dry-run")
    assert "send    /etc/f7.conf (2 bytes)" in plain.stdout

    pid, fd = pty.fork()
    if pid == 0:  # child: stdout is a terminal
        os.execv(
            sys.executable,
            [sys.executable, "-m", "bmsync", "-c", str(pair.active_conf), "resync"],
        )
    output = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, output
    text = output.decode(errors="replace")
    assert "━" in text and "ops" in text  # rich's bar, not one line per file
    assert "send    /etc/f7.conf" not in text
    assert "peer in sync" in text


def test_logs_to_the_journal_carry_their_priority(tmp_path: Path) -> None:
    """Under systemd (JOURNAL_STREAM names stderr) each log line starts with
    its syslog priority, which journald keeps: `journalctl -p err` shows it."""
    conf = tmp_path / "bmsync.yaml"
    conf.write_text("node: bm2\nsync:\n  root: relative/dir\n")
    for journal in (True, False):
        err = tmp_path / "stderr"
        with open(err, "w") as out:
            st = os.fstat(out.fileno())
            env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
            if not journal:
                env.pop("JOURNAL_STREAM")
            done = subprocess.run(
                [sys.executable, "-m", "bmsync", "-c", str(conf), "agent"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=out,
                env=env,
                timeout=60,
            )
        assert done.returncode == 2
        logged = err.read_text()
        assert "agent_cannot_start" in logged
        assert logged.startswith("<3>") == journal, logged


def _receiver_conf(tmp_path: Path) -> Path:
    conf = tmp_path / "bmsync.yaml"
    conf.write_text(
        f"node: bm2\nstate_dir: {tmp_path / 'state'}\ncontrol_socket: {tmp_path / 'c.sock'}\n"
        f"sync:\n  root: {tmp_path}\n"
    )
    return conf


def test_global_options_also_after_the_command(tmp_path: Path) -> None:
    conf = _receiver_conf(tmp_path)
    done = bmsync("status", "-c", str(conf))
    assert done.returncode == 3, done.stderr  # no daemon, but this file was read
    assert f"no daemon answers on {tmp_path / 'c.sock'}" in done.stdout
    done = bmsync("config", "check", "-c", str(conf), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["config"] == str(conf)
    done = bmsync("config", "check", "--config", str(conf), "--log-level", "debug")
    assert done.returncode == 0 and f"{conf}: valid" in done.stdout
    # given before the command, it is kept when the command does not repeat it
    done = bmsync("-c", str(conf), "config", "check", "--log-format", "json")
    assert done.returncode == 0 and f"{conf}: valid" in done.stdout
    done = bmsync("status", "--log-level", "loud", "-c", str(conf))
    assert done.returncode == 2 and "invalid choice: 'loud'" in done.stderr


def test_help_is_plain_text_with_exit_codes_and_every_option_explained() -> None:
    from bmsync.cli.main import build_parser

    done = bmsync("--help")
    assert done.returncode == 0
    assert "``" not in done.stdout
    assert "BlueMind" in done.stdout
    assert "exit codes:" in done.stdout
    assert "3   the peer cannot be reached" in done.stdout
    for command in ("resync", "verify", "agent", "run", "status", "config", "promote", "demote"):
        line = next(x for x in done.stdout.splitlines() if x.strip().startswith(command + " "))
        assert len(line.split()) > 1, line  # the command, then what it does

    def undocumented(parser: argparse.ArgumentParser, prog: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    missing += undocumented(sub, f"{prog} {name}")
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
        return missing

    assert undocumented(build_parser(), "bmsync") == []


def test_config_check_json_says_whether_valid(tmp_path: Path) -> None:
    conf = _receiver_conf(tmp_path)
    done = bmsync("-c", str(conf), "config", "check", "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout)["valid"] is True
    conf.write_text("node: bm1\nsync:\n  root: relative/dir\n")
    done = bmsync("-c", str(conf), "config", "check", "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["config"] == str(conf) and report["valid"] is False
    assert f"{conf} line 3: sync.root: 'relative/dir' is a relative path" in report["error"]
    assert "relative path" in done.stderr  # and said to whoever reads the terminal


def test_config_check_shows_the_ha_section(tmp_path: Path) -> None:
    conf = _receiver_conf(tmp_path)
    done = bmsync("-c", str(conf), "config", "check")
    assert "ha: none" in done.stdout
    assert json.loads(bmsync("-c", str(conf), "config", "check", "--json").stdout)["ha"] is None
    conf.write_text(
        conf.read_text() + "ha:\n  vip:\n    address: 10.0.0.10\n    interface: eth0\n"
        "    check_interval_s: 2.5\n"
    )
    done = bmsync("-c", str(conf), "config", "check")
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("ha:"))
    assert "10.0.0.10" in line and "eth0" in line and "2.5 s" in line
    assert "10.0.0.10/32" in line and "5 gratuitous ARPs 200 ms apart" in line
    assert "    storage: none" in done.stdout and "    services: none" in done.stdout
    report = json.loads(bmsync("-c", str(conf), "config", "check", "--json").stdout)
    assert report["ha"] == {
        "vip": {
            "address": "10.0.0.10",
            "prefix": 32,
            "interface": "eth0",
            "check_interval_s": 2.5,
            "arp_count": 5,
            "arp_interval_ms": 200,
        },
        "storage": [],
        "services": None,
        "fencing": None,
    }
    assert "    fencing: none (this node cannot power its peer off)" in done.stdout


# Every ha key given, as the README shows them (issue 13).
HA_FULL = """\
ha:
  vip:
    address: 10.0.0.10
    prefix: 24
    interface: eth0
    check_interval_s: 5
    arp_count: 7
    arp_interval_ms: 150
  storage:
    - device: /dev/disk/by-uuid/5d1e2f3a-0b6e-4c1d-9f00-1a2b3c4d5e6f
      mount: /var/spool/cyrus
      fstype: ext4
      options: [noatime]
    - device: /dev/disk/by-uuid/77aa
      mount: /var/spool/cyrus/meta
      fstype: xfs
      options: [noatime, nodiratime]
      fsck: false
      kill_grace_s: 30
    - device: /dev/drbd0
      mount: /var/lib/cyrus
      fstype: ocfs2
      shared: true
    - device: /dev/sdd1
      mount: /srv/archive
      fstype: btrfs
  services:
    start: ["bmctl start", "systemctl start bm-cyrus-imapd"]
    stop: ["bmctl stop"]
    check: ["bmctl status"]
    timeout_s: 300
"""


def test_config_check_round_trips_a_full_ha_section(tmp_path: Path) -> None:
    conf = _receiver_conf(tmp_path)
    secret = tmp_path / "ipmi-password"
    secret.write_text("not shown\n")
    secret.chmod(0o600)
    fencing = (
        "  fencing:\n    address: 10.0.1.2\n    user: admin\n"
        f"    password_file: {secret}\n    tool: ipmipower\n"
    )
    conf.write_text(conf.read_text() + HA_FULL + fencing)
    done = bmsync("-c", str(conf), "config", "check", "--json")
    assert done.returncode == 0, done.stderr
    assert "not shown" not in done.stdout
    assert json.loads(done.stdout)["ha"] == {
        "vip": {
            "address": "10.0.0.10",
            "prefix": 24,
            "interface": "eth0",
            "check_interval_s": 5.0,
            "arp_count": 7,
            "arp_interval_ms": 150,
        },
        "storage": [
            {
                "device": "/dev/disk/by-uuid/5d1e2f3a-0b6e-4c1d-9f00-1a2b3c4d5e6f",
                "mount": "/var/spool/cyrus",
                "fstype": "ext4",
                "options": ["noatime"],
                "fsck": True,
                "shared": False,
                "kill_grace_s": 10.0,
            },
            {
                "device": "/dev/disk/by-uuid/77aa",
                "mount": "/var/spool/cyrus/meta",
                "fstype": "xfs",
                "options": ["noatime", "nodiratime"],
                "fsck": False,
                "shared": False,
                "kill_grace_s": 30.0,
            },
            {
                "device": "/dev/drbd0",
                "mount": "/var/lib/cyrus",
                "fstype": "ocfs2",
                "options": [],
                "fsck": False,
                "shared": True,
                "kill_grace_s": 10.0,
            },
            {
                "device": "/dev/sdd1",
                "mount": "/srv/archive",
                "fstype": "btrfs",
                "options": [],
                "fsck": False,
                "shared": False,
                "kill_grace_s": 10.0,
            },
        ],
        "services": {
            "start": ["bmctl start", "systemctl start bm-cyrus-imapd"],
            "stop": ["bmctl stop"],
            "check": ["bmctl status"],
            "timeout_s": 300.0,
        },
        "fencing": {
            "address": "10.0.1.2",
            "user": "admin",
            "password_file": str(secret),
            "method": "ipmi",
            "tool": "ipmipower",
            "port": 623,
            "interface": "lanplus",
            "cipher_suite": 3,
            "timeout_s": 20.0,
            "retries": 2,
            "agent": "",
        },
    }
    done = bmsync("-c", str(conf), "config", "check")
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    first = out.index(
        "    storage (mounted in this order on the active node only, unmounted in reverse):"
    )
    assert out[first + 1 : first + 5] == [
        "      1. /var/spool/cyrus: /dev/disk/by-uuid/5d1e2f3a-0b6e-4c1d-9f00-1a2b3c4d5e6f ext4, "
        "options noatime, fsck yes, shared no, holders killed 10 s after SIGTERM",
        "      2. /var/spool/cyrus/meta: /dev/disk/by-uuid/77aa xfs, "
        "options noatime,nodiratime, fsck no, shared no, holders killed 30 s after SIGTERM",
        "      3. /var/lib/cyrus: /dev/drbd0 ocfs2, options defaults, fsck no, shared yes, "
        "holders killed 10 s after SIGTERM",
        "      4. /srv/archive: /dev/sdd1 btrfs, options defaults, fsck no, shared no, "
        "holders killed 10 s after SIGTERM",
    ]
    assert out[first + 5 :][:4] == [
        "    services (each command within 300 s):",
        "      start: 'bmctl start', 'systemctl start bm-cyrus-imapd'",
        "      stop:  'bmctl stop'",
        "      check: 'bmctl status'",
    ]
    line = next(x for x in out if x.startswith("ha:"))
    assert "VIP 10.0.0.10/24 on eth0" in line and "7 gratuitous ARPs 150 ms apart" in line
    assert (
        f"    fencing: the peer's BMC 10.0.1.2:623, user admin, password in {secret}, through "
        "IPMI (ipmipower, lanplus, cipher suite 3); power off confirmed within 20 s, 2 retries"
    ) in out
    assert "not shown" not in done.stdout


def test_config_check_refuses_cyrus_on_nfs(tmp_path: Path) -> None:
    conf = _receiver_conf(tmp_path)
    base = conf.read_text()
    lines = len(base.splitlines())  # HA_FULL line 16 is the second fstype
    conf.write_text(base + HA_FULL.replace("fstype: xfs", "fstype: nfs4"))
    for extra in ((), ("--json",)):
        done = bmsync("-c", str(conf), "config", "check", *extra)
        assert done.returncode == 1
        where = f"{conf} line {lines + 16}: ha.storage[1].fstype: nfs4 for /var/spool/cyrus/meta"
        assert where in done.stderr and "never NFS" in done.stderr
    assert where in json.loads(done.stdout)["error"]


def test_a_key_locked_by_a_passphrase_is_a_config_error(pair: Pair) -> None:
    """Nobody types a passphrase for the daemon: config check says so, with
    the command that fixes it, and that command does fix it."""
    (pair.active / "etc").mkdir()
    (pair.active / "etc/a.conf").write_text("a\n")
    key = pair.sshd.client_key
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "secret", "-f", str(key)], check=True)
    for command, code in ((["config", "check"], 1), (["resync"], 2)):
        done = pair.bmsync(*command)
        assert done.returncode == code, done.stderr
        assert f"peer.identity: {key} is protected by a passphrase" in done.stderr
        assert f"ssh-keygen -p -N '' -f {key}" in done.stderr
    assert list(pair.passive.iterdir()) == []
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "secret", "-N", "", "-f", str(key)], check=True)
    assert pair.bmsync("config", "check").returncode == 0
    assert pair.bmsync("resync").returncode == 0
    assert (pair.passive / "etc/a.conf").read_text() == "a\n"


def test_config_check_ha_without_a_vip(tmp_path: Path) -> None:
    conf = _receiver_conf(tmp_path)
    conf.write_text(
        conf.read_text() + "ha:\n  storage:\n    - device: /dev/sdb1\n"
        "      mount: /var/spool/cyrus\n      fstype: ext4\n"
    )
    done = bmsync("-c", str(conf), "config", "check")
    assert done.returncode == 0, done.stderr
    assert "ha: no VIP (none watched by the split-brain guard)" in done.stdout
    assert "      1. /var/spool/cyrus: /dev/sdb1 ext4, options defaults, fsck yes" in done.stdout
    assert "    services: none (no service step runs)" in done.stdout
    report = json.loads(bmsync("-c", str(conf), "config", "check", "--json").stdout)
    assert report["ha"]["vip"] is None and report["ha"]["services"] is None
    assert [s["mount"] for s in report["ha"]["storage"]] == ["/var/spool/cyrus"]
