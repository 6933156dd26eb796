"""The sender's end of a sync session, over any ``FrameChannel``.

``PeerSession`` does the handshake, fetches the agent's manifest and applies
a plan. Applying is pipelined: one task streams operations, file content and
``Commit`` frames without waiting, another collects the ``Applied`` answers,
so a plan of a thousand files costs one round trip, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from bmsync import __version__
from bmsync.core.errors import (
    AgentFailed,
    PeerRefused,
    ProtocolError,
    RemoteProtocolError,
    SplitBrainSuspected,
    TransportError,
    TreeTooLarge,
)
from bmsync.core.frames import (
    PROTOCOL_VERSION,
    Applied,
    Bye,
    Commit,
    Expect,
    Failure,
    Fetch,
    Frame,
    Hello,
    ManifestPart,
    ManifestRequest,
    Purpose,
    Put,
    PutAbort,
    PutChunk,
    PutHole,
    Refuse,
    Welcome,
)
from bmsync.core.ha_frames import HaAction, HaAnswer, HaRequest, MountsReport, MountsRequest
from bmsync.core.manifest import MAX_ENTRIES, Entry, Kind
from bmsync.core.ops import Delete, Op, PutFile
from bmsync.core.paths import show
from bmsync.core.roles import Role
from bmsync.link.file_sender import DeltaBase, FileSender, FileSent
from bmsync.link.outbox import FileFrame
from bmsync.link.ssh import FrameChannel

log = structlog.get_logger("bmsync.session")

# A batch is committed (files renamed into place, answer sent) after this
# many operations or bytes of content, whichever comes first: small enough
# to bound the agent's staged files, large enough to amortise the fsyncs.
BATCH_MAX_OPS = 1000
BATCH_MAX_BYTES = 64 * 1024 * 1024

Progress = Callable[[Op, int], None]
# path -> the digest of the file bmsync last wrote there (b"": none), or
# None when unknown (or not a file): the agent keeps a copy of a file that
# turns out to differ before it replaces or deletes it
Acknowledged = Callable[[bytes], bytes | None]
# What the agent wrote before it hung up is already on its way: a last read
# need not wait long for it.
WHY_LOST_WAIT_S = 2.0


@dataclass
class Outcome:
    """What applying a plan did: the peer's new entries and what failed."""

    results: dict[bytes, Entry | None] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    files_sent: int = 0
    bytes_sent: int = 0
    skipped: list[tuple[bytes, str]] = field(default_factory=list)
    # files that kept changing while read: not sent, to be taken again
    changing: list[bytes] = field(default_factory=list)
    deltas: int = 0  # files sent as deltas
    # files changed on the peer since bmsync wrote them: (path, where the
    # agent kept a copy before replacing or deleting them)
    backups: list[tuple[bytes, str]] = field(default_factory=list)

    def count(self, path: bytes, file: FileSent) -> int:
        """Add what sending the file at ``path`` did; the bytes it sent."""
        if file.sent:
            self.files_sent += 1
            self.bytes_sent += file.bytes
            self.deltas += int(file.delta)
        if file.changing:
            self.changing.append(path)
        if file.skipped is not None:
            self.skipped.append((path, file.skipped))
        return file.bytes


class PeerSession:
    def __init__(
        self,
        channel: FrameChannel,
        node: str,
        epoch: int = 0,
        role: Role = Role.ACTIVE,
        *,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        """``max_entries``: the most manifest entries accepted from the peer
        (``sync.max_entries``), so a filled passive cannot fill this node's
        memory."""
        self._channel = channel
        self.node = node
        self.epoch = epoch
        self.role = role
        self.max_entries = max_entries
        self.peer: Welcome | None = None

    async def open(self, purpose: Purpose) -> Welcome:
        hello = Hello(PROTOCOL_VERSION, self.node, self.role, self.epoch, purpose, __version__)
        await self._channel.send([hello])
        try:
            answer = await self._receive()
        except RemoteProtocolError as exc:
            raise AgentFailed(f"the peer's agent cannot start: {exc}") from exc
        if not isinstance(answer, Welcome):
            raise ProtocolError(f"expected Welcome, the agent sent {type(answer).__name__}")
        self.peer = answer
        log.info("session_open", peer=answer.node, purpose=str(purpose))
        return answer

    async def _receive(self) -> Frame:
        """The agent's next frame; a refusal (at the handshake, or in the
        middle of a session when this node's role changed there) raises."""
        answer = await self._channel.receive()
        if isinstance(answer, Refuse):
            started = "refused the session" if self.peer is None else "ended the session"
            message = f"peer {answer.node} {started}: {answer.reason}"
            refusal = answer.refusal()
            if refusal.suspects_split_brain:
                raise SplitBrainSuspected(message, refusal)
            raise PeerRefused(message)
        return answer

    async def fetch_manifest(self, fresh: bool = False) -> dict[bytes, Entry]:
        """The agent's manifest; ``fresh``: every file read, none cached."""
        entries = await self._manifest(ManifestRequest(fresh))
        assert entries is not None  # only an 'expect' can be answered 'unchanged'
        return entries

    async def fetch_manifest_if_changed(self, expect: bytes) -> dict[bytes, Entry] | None:
        """The agent's manifest, or ``None`` if it is the one whose
        ``manifest_digest`` is ``expect`` (nothing else crosses the link)."""
        return await self._manifest(ManifestRequest(expect=expect))

    async def _manifest(self, request: ManifestRequest) -> dict[bytes, Entry] | None:
        expect = request.expect
        await self._channel.send([request])
        entries: dict[bytes, Entry] = {}
        while True:
            part = await self._receive()
            if not isinstance(part, ManifestPart):
                raise ProtocolError(f"expected ManifestPart, got {type(part).__name__}")
            if part.unchanged:
                if not expect or entries:
                    raise ProtocolError("the agent said 'unchanged' to a request expecting nothing")
                return None
            entries.update(part.entries)
            if len(entries) > self.max_entries:
                raise TreeTooLarge(
                    f"the peer's manifest holds more than {self.max_entries:,} entries "
                    "(sync.max_entries): not read further. If its tree is meant to be this "
                    "large, raise sync.max_entries in the configuration of both nodes; if "
                    "not, find what filled the peer's synced paths"
                )
            if part.last:
                return entries

    async def ha_step(self, action: HaAction, operation: str) -> HaAnswer:
        """Run one step of an HA operation on the peer (a session of
        purpose ``ha``); what it did, or why it failed."""
        await self._channel.send([HaRequest(action, operation)])
        answer = await self._receive()
        if not isinstance(answer, HaAnswer):
            raise ProtocolError(f"expected HaAnswer, the agent sent {type(answer).__name__}")
        return answer

    async def mounts(self, devices: list[str]) -> MountsReport:
        """Where the peer has each of ``devices`` mounted (read-only)."""
        await self._channel.send([MountsRequest(devices)])
        answer = await self._receive()
        if not isinstance(answer, MountsReport):
            raise ProtocolError(f"expected MountsReport, the agent sent {type(answer).__name__}")
        return answer

    async def fetch(self, path: bytes) -> list[FileFrame]:
        """The peer's copy of ``path`` as the frames that would write it:
        ``PutChunk`` and ``PutHole``* then ``Put``, or ``[PutAbort]`` if it
        has none."""
        await self._channel.send([Fetch(path)])
        frames: list[FileFrame] = []
        while True:
            frame = await self._receive()
            if not isinstance(frame, (PutChunk, PutHole, Put, PutAbort)) or frame.path != path:
                raise ProtocolError(f"expected the content of {show(path)}, got {frame!r:.80}")
            frames.append(frame)
            if isinstance(frame, (Put, PutAbort)):
                return frames

    async def wait_lost(self) -> None:
        await self._channel.wait_lost()

    async def why_lost(self) -> None:
        """The link is gone while nothing was being read: raise the refusal
        the agent sent before it hung up (it was promoted, or saw a higher
        stamp), if it sent one."""
        with contextlib.suppress(TransportError, ProtocolError, TimeoutError):
            await asyncio.wait_for(self._receive(), WHY_LOST_WAIT_S)

    async def close(self) -> None:
        """Say goodbye if the agent still listens (it hangs up after a
        refusal or a protocol error), then close the channel."""
        try:
            with contextlib.suppress(TransportError):
                await self._channel.send([Bye()])
        finally:
            await self._channel.close()

    async def apply(
        self,
        ops: list[Op],
        root_fd: int,
        progress: Progress | None = None,
        delta_base: DeltaBase | None = None,
        acknowledged: Acknowledged | None = None,
    ) -> Outcome:
        """Send ``ops``; ``delta_base(path)`` may offer the version the peer
        holds (digest, content) so that a modified file travels as a delta;
        ``acknowledged`` tells the agent which version of each file it
        replaces or deletes it should find there."""
        outcome = Outcome()
        batches = list(_batches(ops))
        files = FileSender(self._channel.send, root_fd, delta_base)

        async def send_all() -> None:
            try:
                await send_batches()
            except TransportError:
                # the agent hung up: collect_all says why (a refusal, or the loss)
                return

        async def send_batches() -> None:
            for number, batch in enumerate(batches):
                for op in batch:
                    sent = 0
                    lead = _expectation(op, acknowledged)
                    if isinstance(op, PutFile):
                        sent = outcome.count(op.path, await files.send(op, lead))
                    else:
                        await self._channel.send([*lead, op])
                    if progress is not None:
                        progress(op, sent)
                await self._channel.send([Commit(number)])

        async def collect_all() -> None:
            for number in range(len(batches)):
                answer = await self._receive()
                if not isinstance(answer, Applied) or answer.batch != number:
                    raise ProtocolError(
                        f"expected Applied for batch {number}, got {type(answer).__name__}"
                    )
                outcome.results.update(answer.results)
                outcome.failures.extend(answer.failures)
                outcome.backups.extend(answer.backups)

        await _together(send_all(), collect_all())
        log.info(
            "plan_applied",
            ops=len(ops),
            batches=len(batches),
            files=outcome.files_sent,
            bytes=outcome.bytes_sent,
            failures=len(outcome.failures),
        )
        return outcome


def _expectation(op: Op, acknowledged: Acknowledged | None) -> list[Frame]:
    """The Expect to send before an operation that replaces or deletes a file."""
    if acknowledged is None or not (
        isinstance(op, PutFile) or (isinstance(op, Delete) and op.kind == Kind.FILE)
    ):
        return []
    digest = acknowledged(op.path)
    return [] if digest is None else [Expect(op.path, digest)]


def _batches(ops: list[Op]) -> Iterator[list[Op]]:
    batch: list[Op] = []
    size = 0
    for op in ops:
        batch.append(op)
        if isinstance(op, PutFile):
            size += op.entry.size
        if len(batch) >= BATCH_MAX_OPS or size >= BATCH_MAX_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


async def _together(*coros: Coroutine[Any, Any, None]) -> None:
    """Run coroutines concurrently; the first failure cancels the rest and
    is raised as itself (not wrapped in an ExceptionGroup)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = task.exception()
            if error is not None:
                raise error
        await asyncio.gather(*pending)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
