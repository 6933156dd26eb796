"""The SSH link to the peer's agent (asyncssh), as a channel of frames.

``connect`` opens an SSH connection with the configured key, checks the
peer's host key strictly against ``known_hosts`` (there is no "accept new"),
turns on keepalives, and starts ``agent_command`` on the peer. The result is
a ``FrameChannel``: ``send`` frames (buffered, drained), ``receive`` one
frame. asyncssh's and the OS's errors become bmsync's ``TransportError``
subclasses here, with the host, the port and what to do.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from typing import Protocol

import asyncssh
import structlog

from bmsync.config.model import PeerConfig
from bmsync.core.codec import FrameDecoder, encode
from bmsync.core.errors import (
    AgentFailed,
    AuthRefused,
    ConfigError,
    HostKeyMismatch,
    PeerUnreachable,
    RemoteProtocolError,
    TransportError,
)
from bmsync.core.frames import ErrorFrame, Frame

log = structlog.get_logger("bmsync.transport")

READ_BYTES = 256 * 1024
# Lines of the agent's stderr kept to explain a failure.
STDERR_LINES = 20
# Keepalives unanswered before the link is declared dead.
KEEPALIVE_COUNT_MAX = 3
# Exit status of a shell that could not find the command.
COMMAND_NOT_FOUND = 127
# What the passive node's authorized_keys line should force (README).
FORCED_COMMAND = "/usr/local/bin/bmsync agent"


class FrameChannel(Protocol):
    """What a sync session needs from a link to the agent."""

    async def send(self, frames: list[Frame]) -> None: ...

    async def receive(self) -> Frame: ...

    async def close(self) -> None: ...

    async def wait_lost(self) -> None:
        """Return when the link is gone (the agent exited, SSH died)."""
        ...


class SshChannel:
    """Frames over the stdin/stdout of ``bmsync agent`` on the peer."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        process: asyncssh.SSHClientProcess[bytes],
        where: str,
        command: str,
        user: str = "root",
    ) -> None:
        self._conn = conn
        self._process = process
        self._where = where
        self._command = command
        self._user = user
        self._decoder = FrameDecoder()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._stderr_task = asyncio.create_task(self._collect_stderr())

    async def _collect_stderr(self) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):  # the link went down
            async for line in self._process.stderr:
                text = line.decode("utf-8", "replace").rstrip()
                self._stderr.append(text)
                log.debug("peer_stderr", peer=self._where, line=text)

    async def send(self, frames: list[Frame]) -> None:
        try:
            self._process.stdin.write(b"".join(encode(f) for f in frames))
            await self._process.stdin.drain()
        except (asyncssh.Error, OSError, BrokenPipeError) as exc:
            raise await self._failure(f"link lost while sending: {exc}") from exc

    async def receive(self) -> Frame:
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                if isinstance(frame, ErrorFrame):
                    raise RemoteProtocolError(f"agent on {self._where}: {frame.message}")
                return frame
            try:
                data = await self._process.stdout.read(READ_BYTES)
            except (asyncssh.Error, OSError) as exc:
                raise await self._failure(f"link lost while receiving: {exc}") from exc
            if not data:
                raise await self._failure("the agent closed the session")
            self._decoder.feed(data)

    async def _failure(self, what: str) -> TransportError:
        with contextlib.suppress(asyncio.TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(self._process.wait_closed(), 5)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._stderr_task), 1)
        status = self._process.exit_status
        said = " | ".join(line for line in self._stderr if line) or "nothing on stderr"
        if status == COMMAND_NOT_FOUND:
            # The peer's key line forces its own command, whatever we ask:
            # peer.agent_command only matters for a key without command=.
            return AgentFailed(
                f"{self._where}: the peer could not find the bmsync agent to run "
                f'(exit status 127; stderr: {said}). On the peer, fix the command="..." '
                f"of this node's key in ~{self._user}/.ssh/authorized_keys to bmsync's "
                f'full path (command="{FORCED_COMMAND}",restrict), or install bmsync '
                f"there; peer.agent_command ('{self._command}') is only what runs for a "
                "key without a forced command"
            )
        return AgentFailed(
            f"{self._where}: {what} (agent exit status {status}; stderr: {said}); "
            "run 'bmsync -c FILE agent </dev/null' on the peer to check its configuration"
        )

    async def wait_lost(self) -> None:
        await self._process.wait_closed()

    async def close(self) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            self._process.stdin.write_eof()
        with contextlib.suppress(asyncio.TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(self._process.wait_closed(), 10)
        self._stderr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._stderr_task
        self._conn.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._conn.wait_closed(), 5)


# asyncssh's default ciphers, AES-GCM first: with AES-NI it costs a fraction
# of ChaCha20-Poly1305, which asyncssh runs as two passes per packet. All
# the defaults stay offered, so a server restricted to any of them connects.
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)


async def connect(peer: PeerConfig) -> SshChannel:
    where = f"{peer.user}@{peer.host}:{peer.port}"
    try:
        key = asyncssh.read_private_key(str(peer.identity))
    except (asyncssh.KeyImportError, OSError) as exc:
        raise ConfigError(
            f"peer.identity {peer.identity}: cannot load the private key ({exc}); "
            "it must be an unencrypted OpenSSH key (ssh-keygen -t ed25519 -N '')"
        ) from exc
    try:
        known_hosts = asyncssh.read_known_hosts(str(peer.known_hosts))
    except (ValueError, OSError) as exc:
        raise ConfigError(f"peer.known_hosts {peer.known_hosts}: cannot read it ({exc})") from exc
    try:
        conn = await asyncio.wait_for(
            asyncssh.connect(
                peer.host,
                peer.port,
                username=peer.user,
                client_keys=[key],
                known_hosts=known_hosts,
                agent_path=None,
                config=None,
                keepalive_interval=peer.keepalive_interval_s,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
                encryption_algs=list(CIPHERS),
            ),
            peer.connect_timeout_s,
        )
    except TimeoutError as exc:
        raise PeerUnreachable(
            f"{where}: no SSH answer within {peer.connect_timeout_s:g} s; "
            "check that the peer is up, sshd runs and no firewall drops the port"
        ) from exc
    except asyncssh.HostKeyNotVerifiable as exc:
        raise await _host_key_error(peer, where) from exc
    except asyncssh.PermissionDenied as exc:
        raise AuthRefused(
            f"{where}: the peer refused key {peer.identity}; add its public key "
            f"({peer.identity}.pub) to ~{peer.user}/.ssh/authorized_keys on the peer "
            f'(with command="{FORCED_COMMAND}",restrict)'
        ) from exc
    except (OSError, socket.gaierror) as exc:
        raise PeerUnreachable(
            f"{where}: cannot connect ({exc.strerror or exc}); "
            "check peer.host and peer.port, and that sshd runs on the peer"
        ) from exc
    except asyncssh.Error as exc:
        raise TransportError(f"{where}: SSH failed: {exc.reason}") from exc
    try:
        process = await conn.create_process(peer.agent_command, encoding=None)
    except asyncssh.Error as exc:
        conn.close()
        raise AgentFailed(f"{where}: cannot start '{peer.agent_command}': {exc.reason}") from exc
    log.info("connected", peer=where)
    return SshChannel(conn, process, where, peer.agent_command, peer.user)


async def _host_key_error(peer: PeerConfig, where: str) -> HostKeyMismatch:
    """Name the key the peer showed, and whether it is new or changed."""
    try:
        seen_key = await asyncio.wait_for(
            asyncssh.get_server_host_key(peer.host, peer.port), peer.connect_timeout_s
        )
        seen = seen_key.get_fingerprint() if seen_key is not None else "none"
    except (TimeoutError, asyncssh.Error, OSError) as exc:
        seen = f"unknown ({exc})"
    try:
        trusted = asyncssh.read_known_hosts(str(peer.known_hosts)).match(peer.host, "", peer.port)[
            0
        ]
    except (ValueError, OSError):
        trusted = []
    if trusted:
        return HostKeyMismatch(
            f"{where}: HOST KEY CHANGED: the peer shows {seen}, which {peer.known_hosts} "
            "does not trust for this host. If the peer was reinstalled, replace its line "
            "in known_hosts after checking the fingerprint on the peer "
            "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub); otherwise suspect an attack"
        )
    return HostKeyMismatch(
        f"{where}: unknown host key {seen}: {peer.known_hosts} has no entry for this host. "
        f"Add one after checking the fingerprint on the peer: "
        f"ssh-keyscan -p {peer.port} {peer.host} >> {peer.known_hosts}"
    )
