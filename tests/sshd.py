"""A private OpenSSH sshd on 127.0.0.1 for tests: own host key, own config,
a free high port, a client key whose authorized_keys line forces
``bmsync agent`` (as on a real passive node). Started and stopped by pid."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bmsync.core.roles import Role
from bmsync.state.directory import ensure_state_dir
from bmsync.state.roles import RoleStore

SSHD = Path("/usr/sbin/sshd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bmsync-test", "-f", str(path)],
        check=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def agent_command(config: Path) -> str:
    return f"{sys.executable} -m bmsync -c {config} agent"


@dataclass
class Sshd:
    base: Path
    port: int
    host_pub: str
    client_key: Path
    client_pub: str
    known_hosts: Path
    authorized_keys: Path
    process: subprocess.Popen[bytes] | None = None
    address: str = "127.0.0.1"
    netns: str | None = None  # run inside this network namespace
    # run in a mount namespace of its own (mounts made here afterwards are
    # not seen there, nor the other way round): a peer node's mount table
    own_mounts: bool = False
    # instead of netns: an argv prefix that runs sshd inside a test node
    # (``nsenter --net=... --mount=...``, tests/ha/nodes.py)
    launcher: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        base: Path,
        address: str = "127.0.0.1",
        netns: str | None = None,
        own_mounts: bool = False,
    ) -> Sshd:
        if not SSHD.exists():
            raise RuntimeError(f"{SSHD} is missing: apt-get install openssh-server")
        base.mkdir(parents=True, exist_ok=True)
        host_pub = keygen(base / "host_key")
        client_pub = keygen(base / "client_key")
        port = free_port()
        known_hosts = base / "known_hosts"
        known_hosts.write_text(f"[{address}]:{port} {host_pub}\n")
        authorized = base / "authorized_keys"
        authorized.write_text("")
        (base / "sshd_config").write_text(
            f"Port {port}\n"
            f"ListenAddress {address}\n"
            f"HostKey {base / 'host_key'}\n"
            f"AuthorizedKeysFile {authorized}\n"
            f"PidFile {base / 'sshd.pid'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "LogLevel VERBOSE\n"
        )
        return cls(
            base,
            port,
            host_pub,
            base / "client_key",
            client_pub,
            known_hosts,
            authorized,
            address=address,
            netns=netns,
            own_mounts=own_mounts,
        )

    def authorize(self, config: Path, forced: str | None = None) -> None:
        """Let the client key in, forced to run the agent with ``config``."""
        command = forced if forced is not None else agent_command(config)
        self.authorized_keys.write_text(f'command="{command}",restrict {self.client_pub}\n')

    def start(self, open_files: int | None = None) -> None:
        """Start sshd; ``open_files`` lowers its soft RLIMIT_NOFILE (and so its
        sessions'), as a default Debian system has it (1024)."""
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir

        def limit() -> None:
            if open_files is not None:
                hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, hard))

        inside = ["ip", "netns", "exec", self.netns] if self.netns else list(self.launcher)
        if self.own_mounts:
            inside += ["unshare", "--mount", "--propagation", "private", "--"]
        with open(self.base / "sshd.log", "ab") as log:
            # a restarted sshd appends: only what this one writes counts
            logged_before = log.tell()
            self.process = subprocess.Popen(
                [*inside, str(SSHD), "-D", "-e", "-f", str(self.base / "sshd_config")],
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=limit,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.base / 'sshd.log').read_text()}")
            if self.netns is not None or self.launcher:  # not reachable from here: its log says
                listening = f"Server listening on {self.address} port {self.port}".encode()
                if listening in (self.base / "sshd.log").read_bytes()[logged_before:]:
                    return
                time.sleep(0.05)
                continue
            try:
                socket.create_connection((self.address, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("sshd did not start listening within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        return (self.base / "sshd.log").read_text(errors="replace")

    def in_mount_namespace(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in sshd's mount namespace (``own_mounts``)."""
        assert self.process is not None and self.own_mounts
        return subprocess.run(
            ["nsenter", "-t", str(self.process.pid), "-m", "--", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )


def copy_tree(src: Path, dst: Path) -> None:
    """cp -a, keeping owners, modes, times, symlinks and xattrs."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


def write_config(
    path: Path,
    node: str,
    root: Path,
    state_dir: Path,
    sshd: Sshd | None = None,
    paths: tuple[str, ...] = ("/",),
    preset: str = "none",
    exclude: tuple[str, ...] = (),
    port: int | None = None,
    known_hosts: Path | None = None,
    extra_sync: tuple[str, ...] = (),
    promote: bool | None = None,
    extra_top: tuple[str, ...] = (),
    extra_peer: tuple[str, ...] = (),
) -> Path:
    """A node's config. ``promote`` (by default: when it has a peer to send
    to) makes the node active, as 'bmsync promote' would."""
    lines = [
        f"node: {node}",
        f"state_dir: {state_dir}",
        f"control_socket: {state_dir.parent / (node + '.sock')}",
    ]
    if sshd is not None:
        lines += [
            "peer:",
            f"  host: {sshd.address}",
            f"  port: {port or sshd.port}",
            "  user: root",
            f"  identity: {sshd.client_key}",
            f"  known_hosts: {known_hosts or sshd.known_hosts}",
            "  connect_timeout_s: 5",
            "  reconnect_min_s: 0.5",
            "  reconnect_max_s: 2",
            *(f"  {line}" for line in extra_peer),
        ]
    lines += ["sync:", f"  preset: {preset}", f"  root: {root}"]
    lines.append("  paths: [" + ", ".join(json.dumps(p) for p in paths) + "]")
    lines.append("  exclude: [" + ", ".join(json.dumps(e) for e in exclude) + "]")
    lines += [f"  {line}" for line in extra_sync]
    lines += list(extra_top)
    path.write_text("\n".join(lines) + "\n")
    if promote if promote is not None else sshd is not None:
        ensure_state_dir(state_dir)
        roles = RoleStore(state_dir, node)
        role = roles.load()
        if role.role is not Role.ACTIVE:
            roles.save(role.promote(), "promoted by the test set-up")
    return path
