"""``bmsync agent`` over a byte stream: frames in, frames out.

The agent is the forced command of the active node's key, speaking the
protocol on stdin/stdout; the same connection serves any transport (tests
run it in process, and over an asyncssh server). Replies are written as
they are made, never while the role lock is held, so what waits to be sent
stays small whatever the sender asks for. A signal from ``bmsync promote``
(or from a superseding sender) makes the session check this node's role at
once, between two frames.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

from bmsync.agent.receiver import Agent
from bmsync.config.model import Config
from bmsync.config.parse import load as load_config
from bmsync.core.codec import FrameDecoder, encode
from bmsync.core.errors import BmsyncError, LocalFsError, ProtocolError
from bmsync.core.frames import ErrorFrame, Frame
from bmsync.core.ha_frames import HaAnswer, HaRequest
from bmsync.fs.confine import reason
from bmsync.fs.files import write_all
from bmsync.state.directory import ensure_state_dir
from bmsync.state.lock import END_SIGNAL, WAKE_SIGNAL

log = structlog.get_logger("bmsync.agent")

# Replies sent by `bmsync agent` as soon as this many bytes of them are ready
# (a run of small frames can ask for many manifests or Applied answers).
FLUSH_BYTES = 1024 * 1024


class AgentConnection:
    """Bytes in, bytes out, for any transport: ``receive_data`` returns what
    to send back, or with ``send``, sends it as it is made. A protocol error
    becomes an ErrorFrame and ends the session (``finished``); nothing of the
    offending frame was applied."""

    def __init__(self, agent: Agent, send: Callable[[bytes], None] | None = None) -> None:
        """``send``: write replies once ``FLUSH_BYTES`` of them are ready
        (and a ``Fetch``, chunk by chunk), never while holding the role lock,
        so what waits to be sent stays small whatever the sender asks for."""
        self.agent = agent
        self._decoder = FrameDecoder(to_agent=True)
        self._send = send
        self.exit_code = 0

    @property
    def finished(self) -> bool:
        return self.agent.finished

    def receive_data(self, data: bytes) -> bytes:
        out: list[bytes] = []
        try:
            if not data:
                if self._decoder.pending:
                    raise ProtocolError(
                        f"input ended inside a frame ({self._decoder.pending} bytes)"
                    )
                self.agent.finished = True
                return b""
            self._decoder.feed(data)
            while self._handle_some(out):
                self._flush(out)
        except BmsyncError as exc:
            # a broken frame, or this node's tree unreadable: tell the sender
            self._fail_session(str(exc), exc.exit_code)
            out.append(encode(ErrorFrame(str(exc))))
        except OSError as exc:
            # not one path's failure (those are Failures in Applied): this
            # node's state_dir failing mid-session, say; tell the sender why
            message = (
                f"{self.agent.node}: the agent failed on its own filesystem "
                f"({exc.filename!r}: {reason(exc)}); check the filesystems holding "
                f"{self.agent.state_dir} and {self.agent.root} on {self.agent.node}"
            )
            self._fail_session(message, LocalFsError.exit_code)
            out.append(encode(ErrorFrame(message)))
        return self._flush(out)

    def _handle_some(self, out: list[bytes]) -> bool:
        """Handle the frames received, under the role lock, until none is
        left (False) or, when replies are sent as they come, until
        ``FLUSH_BYTES`` of them wait or a Fetch is to be streamed (True)."""
        stream: Iterator[Frame] | None = None
        size = sum(len(b) for b in out)
        with self.agent.role_held():
            while not self.agent.finished and (frame := self._decoder.next_frame()):
                replies = self.agent.handle(frame)
                if self._send is not None and not isinstance(replies, list):
                    stream = replies
                    break
                for reply in replies:
                    out.append(encode(reply))
                    size += len(out[-1])
                if self._send is not None and size >= FLUSH_BYTES:
                    return True
            else:
                return False
        assert stream is not None
        for reply in stream:  # read-only (a file, a manifest): never under the role lock
            out.append(encode(reply))
            self._flush(out)
        return True

    def _flush(self, out: list[bytes]) -> bytes:
        """With ``send``: send ``out`` and return nothing; else return it."""
        data = b"".join(out)
        out.clear()
        if self._send is None:
            return data
        if data:
            self._send(data)
        return b""

    def _fail_session(self, error: str, exit_code: int) -> None:
        log.error("session_failed", error=error)
        self.agent.finished = True
        self.exit_code = exit_code

    def wake(self) -> bytes:
        """This node's role may have changed: the refusal ending the writing
        session, if its sender may no longer write."""
        return b"".join(encode(frame) for frame in self.agent.recheck())


def serve(agent: Agent, read: Callable[[], bytes | None], write: Callable[[bytes], None]) -> int:
    """Run a session over blocking ``read``/``write`` (``read`` returns b""
    at end of input, ``None`` when woken by ``WAKE_SIGNAL``); returns the
    process exit code. Replies are written as they are made."""
    connection = AgentConnection(agent, write)
    try:
        while not connection.finished:
            data = read()
            reply = connection.wake() if data is None else connection.receive_data(data)
            if reply:
                write(reply)
        return connection.exit_code
    finally:
        agent.close()


def make_agent(config: Config) -> Agent:
    """An agent from this node's own configuration."""
    ensure_state_dir(config.state_dir)

    def ha_step(request: HaRequest) -> HaAnswer:
        # loaded only for an HA step: a sync session never loads asyncssh
        from bmsync.ha.actions import perform

        log.info("ha_step_asked", action=str(request.action), operation=request.operation)
        try:
            # the whole file: a step may talk to the peer (the agent's own
            # reading of it leaves the peer section out)
            full = load_config(config.source)
        except BmsyncError as exc:
            return HaAnswer(False, error=str(exc), exit_code=exc.exit_code)
        return perform(full, request.action, request.operation)

    return Agent(
        config.node,
        config.sync.root,
        config.syncset(),
        config.state_dir,
        max_entries=config.sync.max_entries,
        ha=ha_step,
    )


def run_stdio(config_path: Path) -> int:
    """``bmsync agent``: a session on stdin/stdout. A configuration error is
    sent to the sender as an ErrorFrame (and printed on stderr), so the
    active node's operator sees why the agent could not start."""
    # A batch holds a descriptor per directory it writes to; sshd sessions
    # often start with a soft limit of 1024, far below the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        agent = make_agent(load_config(config_path, receiver=True))
    except BmsyncError as exc:
        log.error("agent_cannot_start", error=str(exc))
        write_all(1, encode(ErrorFrame(str(exc))))
        return exc.exit_code

    # `bmsync promote` (or a superseding sender) sends WAKE_SIGNAL to the
    # agent holding the sender lock: it checks the role at once instead of
    # at the sender's next write, so the session ends before promote returns.
    # END_SIGNAL (the same sender connected again) ends it between frames.
    woken, wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    ended: list[int] = []
    signal.signal(WAKE_SIGNAL, lambda signum, frame: None)
    signal.signal(END_SIGNAL, lambda signum, frame: ended.append(signum))
    signal.set_wakeup_fd(wake, warn_on_full_buffer=False)
    agent.wakes = True

    def read() -> bytes | None:
        ready, _, _ = select.select([0, woken], [], [])
        if ended:
            raise SessionReplaced
        if woken in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(woken, 512)
            return None
        return os.read(0, 1024 * 1024)

    def write(data: bytes) -> None:
        write_all(1, data)

    try:
        return serve(agent, read, write)
    except SessionReplaced:
        log.warning("session_replaced", why="the same sender connected again")
        return 0


class SessionReplaced(Exception):
    """The sender of this session connected again: this one is dead."""
