"""One file of a plan onto the channel: whole (chunks, holes), or as a
delta against the version the peer holds when that is worth it; read
again, a few times, if it changes while it is read."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from bmsync.core.delta import (
    DELTA_MAX_BYTES,
    MAX_DELTA_OPS,
    compress_literals,
    literal_bytes,
    make_delta_within,
)
from bmsync.core.frames import Frame, Put, PutAbort, PutChunk, PutDelta
from bmsync.core.ops import PutFile
from bmsync.core.paths import show
from bmsync.fs.bases import BaseStore
from bmsync.fs.files import is_sparse
from bmsync.link.outbox import file_frames, read_whole

log = structlog.get_logger("bmsync.session")

# path -> (digest, content) of the version the peer holds, if known here
DeltaBase = Callable[[bytes], tuple[bytes, bytes] | None]
# Writes frames in order onto the channel.
Send = Callable[[list[Frame]], Awaitable[None]]
# A delta whose literal data exceeds this goes as a whole file instead (it
# must fit one frame, and past it the saving is small).
DELTA_LITERAL_MAX_BYTES = 1024 * 1024
# Making a delta is given up once its literal data (before compression)
# passes this many times what it may send: zlib rarely does better.
DELTA_RAW_LITERAL_FACTOR = 8
# Reads of a file that keeps changing before it is left for the next pass.
SEND_ATTEMPTS = 3


@dataclass
class FileSent:
    """What sending one file did."""

    bytes: int = 0  # content that crossed the link (a delta's literal data)
    sent: bool = False  # the file went, whole or as a delta
    delta: bool = False
    changing: bool = False  # kept changing while read: not sent, to be taken again
    skipped: str | None = None  # could not be read: why


class FileSender:
    def __init__(self, send: Send, root_fd: int, delta_base: DeltaBase | None) -> None:
        self._send = send
        self._root_fd = root_fd
        self._delta_base = delta_base

    async def send(self, op: PutFile, lead: list[Frame]) -> FileSent:
        """Send ``op``'s file, ``lead`` in the same write as its first
        frame; a file that changes while it is read is aborted on the agent
        (nothing of it applied) and read again."""
        pending = lead

        async def send(frame: Frame) -> None:
            nonlocal pending
            await self._send([*pending, frame])
            pending = []

        # a sparse file goes whole, holes as holes: a delta is written in full
        if (
            self._delta_base is not None
            and BaseStore.wanted(op.entry.size)
            and not is_sparse(self._root_fd, op.path)
        ):
            for _ in range(SEND_ATTEMPTS):
                try:
                    made = await self._delta(op, self._delta_base)
                except _ChangedWhileRead:
                    log.info("file_changed_while_sent", path=show(op.path))
                    continue
                if made is None:
                    break
                frame, literal = made
                await send(frame)
                return FileSent(literal, sent=True, delta=True)
            else:  # still being written: its next event brings it back, as a delta
                return FileSent(changing=True)
        return await self._whole(op, send)

    async def _whole(self, op: PutFile, send: Callable[[Frame], Awaitable[None]]) -> FileSent:
        for _ in range(SEND_ATTEMPTS):
            sent = 0
            try:
                for frame in file_frames(self._root_fd, op.path):
                    if isinstance(frame, (PutChunk, Put)):
                        sent += len(frame.data)
                    await send(frame)
            except OSError as exc:
                # Gone or replaced since the scan: the next pass plans what it is now.
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    return FileSent(skipped=exc.strerror or str(exc))
                return FileSent()
            if not isinstance(frame, PutAbort):
                return FileSent(sent, sent=True)
            log.info("file_changed_while_sent", path=show(op.path))
        return FileSent(changing=True)

    async def _delta(self, op: PutFile, delta_base: DeltaBase) -> tuple[PutDelta, int] | None:
        """The base, the file and the delta are read and made in a worker
        thread: a large file keeps the event loop (the control socket, the
        watcher) waiting for none of it."""
        return await asyncio.to_thread(_make_put_delta, self._root_fd, op.path, delta_base)


def _make_put_delta(
    root_fd: int, path: bytes, delta_base: DeltaBase
) -> tuple[PutDelta, int] | None:
    """The delta that brings the peer's version of ``path`` to the file's
    current content, and its literal bytes; ``None`` if there is no base or
    the delta would cost more than the whole file: more literal data than
    half the file (or ``DELTA_LITERAL_MAX_BYTES``), or more operations than
    the agent takes. Blocking: run in a worker thread."""
    base = delta_base(path)
    if base is None:
        return None
    base_digest, base_data = base
    try:
        current = read_whole(root_fd, path, DELTA_MAX_BYTES)
    except OSError:
        return None
    if current is None:  # grew past the delta limit, or changed as it was read
        raise _ChangedWhileRead
    data, entry = current
    budget = min(DELTA_LITERAL_MAX_BYTES, len(data) // 2)
    ops = make_delta_within(
        base_data, data, max_literal=budget * DELTA_RAW_LITERAL_FACTOR, max_ops=MAX_DELTA_OPS
    )
    if ops is None:
        return None
    ops = compress_literals(ops)
    literal = literal_bytes(ops)
    if literal > budget or len(ops) > MAX_DELTA_OPS:
        return None  # the agent refuses a delta of more operations
    return PutDelta(path, base_digest, ops, entry), literal


class _ChangedWhileRead(Exception):
    """The file is not the version the scan saw: read it again."""
