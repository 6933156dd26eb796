"""Test helpers shared by the suites: an in-memory link to a real Agent,
tree builders, and an independent tree walk to compare results."""

from __future__ import annotations

import asyncio
import os
import random
import stat
import threading
from pathlib import Path

import xxhash

from bmsync.agent.receiver import Agent
from bmsync.core.codec import FrameDecoder, encode
from bmsync.core.errors import RemoteProtocolError
from bmsync.core.excludes import Rule, SyncSet
from bmsync.core.frames import Frame

RECEIVE_WAIT_S = 30.0


class InMemoryChannel:
    """A FrameChannel to an in-process Agent; frames go through the real
    codec both ways, so the bytes are what SSH would carry."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._to_agent = FrameDecoder()
        self._to_us = FrameDecoder()
        self.sent_bytes = 0
        self._sent: asyncio.Event | None = None

    async def send(self, frames: list[Frame]) -> None:
        data = b"".join(encode(f) for f in frames)
        self.sent_bytes += len(data)
        if self._sent is not None:
            self._sent.set()
        self._to_agent.feed(data)
        while (frame := self._to_agent.next_frame()) is not None:
            for reply in self.agent.handle(frame):
                self._to_us.feed(encode(reply))

    async def receive(self) -> Frame:
        from bmsync.core.frames import ErrorFrame

        # the sender may still be making what it sends (a delta is made in a
        # worker thread): wait for its next send before giving up
        while (frame := self._to_us.next_frame()) is None:
            self._sent = asyncio.Event()
            try:
                await asyncio.wait_for(self._sent.wait(), RECEIVE_WAIT_S)
            except TimeoutError:
                raise AssertionError("the agent has nothing to say") from None
        if isinstance(frame, ErrorFrame):
            raise RemoteProtocolError(frame.message)
        return frame

    async def close(self) -> None:
        self.agent.close()

    async def wait_lost(self) -> None:
        await asyncio.Event().wait()  # an in-memory link is never lost


def whole_root(*excludes: str) -> SyncSet:
    return SyncSet.build(["/"], [Rule(e) for e in excludes])


def walk(root: Path) -> dict[str, tuple[object, ...]]:
    """Independent of bmsync: path -> (type, mode, uid, gid, mtime_ns, content
    or link target) for everything below ``root`` (directory mtimes
    included)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, os.fsencode(root)).decode("utf-8", "surrogateescape")
            try:
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    body: object = os.readlink(full)
                elif stat.S_ISREG(st.st_mode):
                    body = Path(os.fsdecode(full)).read_bytes()
                else:
                    body = None
            except FileNotFoundError:  # removed while we walked (a live tree)
                continue
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode) if not stat.S_ISLNK(st.st_mode) else 0,
                st.st_uid,
                st.st_gid,
                st.st_mtime_ns,
                body,
            )
    return out


class VersionReader:
    """Reads ``path`` over and over in a thread while a writer replaces it
    with ``versions``: the digest of every read (``seen``), and the sizes of
    the reads that matched no complete version (``torn``)."""

    def __init__(self, path: Path, versions: list[bytes]) -> None:
        self.path = path
        self.complete = {xxhash.xxh3_128_digest(v) for v in versions}
        self.seen: list[bytes] = []
        self.torn: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read)

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                continue
            digest = xxhash.xxh3_128_digest(data)
            self.seen.append(digest)
            if digest not in self.complete:
                self.torn.append(len(data))

    def __enter__(self) -> VersionReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def two_byte_lines(count: int, seed: int) -> bytes:
    """``count`` lines of one random letter each (issue 11 item 13's file):
    the worst case for chunking by lines."""
    letters = random.Random(seed).randbytes(count).translate(bytes(97 + i % 26 for i in range(256)))
    data = bytearray(2 * count)
    data[0::2] = letters
    data[1::2] = b"\n" * count
    return bytes(data)


def change_both_ends(path: Path) -> bytes:
    """Rewrite the first and the last line of a file of two-byte lines in
    place (no common prefix or suffix left to cut); the new content."""
    with open(path, "r+b") as f:
        f.write(b"#\n")
        f.seek(-2, os.SEEK_END)
        f.write(b"$\n")
    return path.read_bytes()
