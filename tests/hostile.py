"""A hostile sender against a real ``bmsync agent`` process.

The attacks of issue 11 (item 11, "unbounded agent memory"; the SSH key has
leaked and the sender is hostile) as streams of encoded frames, and a driver
that runs ``python -m bmsync agent`` on stdin/stdout pipes and reports what
it answered, its exit code and its peak resident memory: ``ru_maxrss`` of
the agent alone, from ``wait4`` in a small wrapper process (the kernel's
high-water mark of that process, whatever the load on the machine).

Used by tests/integration/test_agent_hostile.py (scaled to a few seconds)
and by bench/agent_memory.py (at the issue's scale).
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from bmsync.core.codec import FrameDecoder, encode
from bmsync.core.delta import MAX_DELTA_OPS, Copy, DeltaOp, Literal
from bmsync.core.frames import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Applied,
    Bye,
    Commit,
    ErrorFrame,
    Expect,
    Fetch,
    Frame,
    Hello,
    ManifestRequest,
    Purpose,
    PutChunk,
)
from bmsync.core.manifest import DIGEST_SIZE, Entry, Kind, digest_bytes
from bmsync.core.ops import SetMeta
from bmsync.core.roles import Role
from tests.sshd import write_config

BASE_PATH = b"etc/base.bin"
BASE_BYTES = 64 * 1024
BIG_PATH = b"etc/big.img"
# frames are written to the agent in pieces of about this size
WRITE_BYTES = 1024 * 1024


@dataclass
class Passive:
    """A passive node's tree and configuration, holding one file a delta
    can name as its base."""

    root: Path
    state: Path
    config: Path
    base: bytes

    @classmethod
    def make(cls, where: Path, big_file: int = 0, files: int = 0) -> Passive:
        """``big_file``: also a (sparse) file of that size, ``BIG_PATH``;
        ``files``: also that many small files under etc/many/."""
        root, state = where / "root", where / "state"
        (root / "etc").mkdir(parents=True)
        base = random.Random(11).randbytes(BASE_BYTES)
        (root / os.fsdecode(BASE_PATH)).write_bytes(base)
        if big_file:
            with open(root / os.fsdecode(BIG_PATH), "wb") as f:
                piece = b"\xa5" * WRITE_BYTES  # written, not a hole: holes travel as PutHole
                for _ in range(big_file // WRITE_BYTES):
                    f.write(piece)
                f.write(piece[: big_file % WRITE_BYTES])
        for n in range(files):
            if n % 1000 == 0:
                (root / f"etc/many/{n // 1000:03}").mkdir(parents=True)
            (root / f"etc/many/{n // 1000:03}/{n:06}.conf").write_bytes(b"%d\n" % n)
        config = write_config(where / "passive.yaml", "bm2", root, state, promote=False)
        return cls(root, state, config, base)

    def files(self) -> dict[str, bytes]:
        """Every file under the root (temporary files included), by path."""
        found = {}
        for top, _, names in os.walk(self.root):
            for name in names:
                path = Path(top) / name
                found[str(path.relative_to(self.root))] = path.read_bytes()
        return found


@dataclass
class AgentRun:
    replies: list[Frame]
    exit_code: int
    peak_kib: int  # ru_maxrss of the agent process
    seconds: float
    sent_bytes: int
    stderr: str = ""
    write_error: str = ""  # why the sender stopped early (the agent hung up)

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024

    def errors(self) -> list[str]:
        return [f.message for f in self.replies if isinstance(f, ErrorFrame)]

    def applied(self) -> list[Applied]:
        return [f for f in self.replies if isinstance(f, Applied)]


def raw(fields: dict[str, object]) -> bytes:
    """A frame as a hostile sender writes it: no check of ours on the way."""
    body = msgspec.msgpack.encode(fields)
    return struct.pack(">I", len(body)) + body


def put_delta(ops: list[DeltaOp], base: bytes, declared_size: int) -> bytes:
    entry = result_entry(declared_size)
    return raw(
        {"type": "delta", "path": BASE_PATH, "base": digest_bytes(base), "ops": ops, "entry": entry}
    )


def hello() -> bytes:
    return encode(Hello(PROTOCOL_VERSION, "bm1", Role.ACTIVE, 1, Purpose.WRITE, "hostile"))


def result_entry(size: int) -> Entry:
    return Entry(Kind.FILE, 0o644, 0, 0, 0, size=size, digest=b"\x5a" * DIGEST_SIZE)


def expect_flood(total_bytes: int, path_bytes: int = 4000) -> Iterator[bytes]:
    """``total_bytes`` of Expect frames, each for another long path, and no
    Commit: everything the agent keeps of them waits for a commit that never
    comes."""
    yield hello()
    sent = 0
    n = 0
    names = (path_bytes - 4) // 200 + 1
    while sent < total_bytes:
        piece = []
        size = 0
        while size < WRITE_BYTES and sent + size < total_bytes:
            stem = b"/".join(b"%0200d" % (n * names + k) for k in range(names))
            frame = encode(Expect(b"etc/" + stem[: path_bytes - 4], b"\x01" * DIGEST_SIZE))
            piece.append(frame)
            size += len(frame)
            n += 1
        sent += size
        yield b"".join(piece)
    yield encode(Bye())


def zlib_bomb(inflated_bytes: int, declared_size: int, base: bytes) -> Iterator[bytes]:
    """A delta whose one literal is a zlib stream of ``inflated_bytes`` of
    zeros (about a thousandth of that on the wire), for a result that
    claims ``declared_size`` bytes."""
    packer = zlib.compressobj(9)
    zeros = bytes(WRITE_BYTES)
    parts = [packer.compress(zeros) for _ in range(inflated_bytes // WRITE_BYTES)]
    parts.append(packer.flush())
    ops: list[DeltaOp] = [Literal(b"".join(parts), compressed=True)]
    yield hello()
    yield put_delta(ops, base, declared_size)
    yield encode(Commit(0))
    yield encode(Bye())


def copy_flood(count: int, length: int, base: bytes) -> Iterator[bytes]:
    """A delta of ``count`` copies of the same ``length`` bytes of the base
    (six bytes each on the wire), for a result of ``count * length`` bytes."""
    ops: list[DeltaOp] = [Copy(0, length)] * count
    yield hello()
    yield put_delta(ops, base, count * length)
    yield encode(Commit(0))
    yield encode(Bye())


def setmeta_flood(total_bytes: int, pairs: int = 9_000) -> Iterator[bytes]:
    """SetMeta frames for a directory, each with ``pairs`` small extended
    attributes, and no Commit: directory metadata waits for the commit."""
    xattrs = tuple((b"user.%d" % k, b"") for k in range(pairs))
    frame = encode(SetMeta(b"etc", Entry(Kind.DIR, 0o755, 0, 0, 0, xattrs=xattrs)))
    yield hello()
    per_write = max(1, WRITE_BYTES // len(frame))
    for _ in range(0, total_bytes // len(frame) + 1, per_write):
        yield frame * per_write
    yield encode(Bye())


def staged_flood(files: int) -> Iterator[bytes]:
    """The first chunk of ``files`` files and never their end: each is a
    temporary file, an open descriptor and a record until the commit."""
    yield hello()
    for start in range(0, files, 10_000):
        yield b"".join(
            encode(PutChunk(b"etc/s%07d" % n, 0, b"x"))
            for n in range(start, min(files, start + 10_000))
        )
    yield encode(Bye())


def worst_case(held_bytes: int, base: bytes) -> Iterator[bytes]:
    """What a batch may keep, up to ``held_bytes`` as the agent counts it
    (directory SetMeta frames with 9,000 xattrs each), then the frame that
    decodes to the most objects: a delta of MAX_DELTA_OPS literals that
    fills MAX_FRAME_BYTES, applied for real (its digest is right), and the
    batch committed."""
    xattrs = tuple((b"user.%d" % k, b"") for k in range(9_000))
    setmeta = encode(SetMeta(b"etc", Entry(Kind.DIR, 0o755, 0, 0, 0, xattrs=xattrs)))
    held = 1024 + 5 * 3 + sum(128 + len(k) for k, _ in xattrs)  # bounds._held
    yield hello()
    yield setmeta * (held_bytes // held)
    size = (MAX_FRAME_BYTES - 200) // MAX_DELTA_OPS - 5
    literals = [random.Random(n).randbytes(size) for n in range(MAX_DELTA_OPS)]
    result = b"".join(literals)
    ops: list[DeltaOp] = [Literal(data) for data in literals]
    entry = Entry(Kind.FILE, 0o644, 0, 0, 0, size=len(result), digest=digest_bytes(result))
    yield raw(
        {"type": "delta", "path": BASE_PATH, "base": digest_bytes(base), "ops": ops, "entry": entry}
    )
    yield encode(Commit(0))
    yield encode(Bye())


def xattr_bomb(frame_bytes: int = MAX_FRAME_BYTES - 64) -> Iterator[bytes]:
    """One SetMeta frame of ``frame_bytes`` that is nearly all extended
    attributes of 6 bytes each (name ``u``, empty value): each decodes to a
    tuple of two bytes objects, 70 bytes of Python objects."""
    pairs = (frame_bytes - 64) // 6
    xattrs = [[b"u", b""]] * pairs
    yield hello()
    yield raw(
        {"type": "setmeta", "path": b"etc", "entry": [2, 0o755, 0, 0, 0, 0, b"", b"", xattrs]}
    )
    yield encode(Bye())


def manifest_bomb(frame_bytes: int = MAX_FRAME_BYTES - 64) -> Iterator[bytes]:
    """One ManifestPart frame (which only an agent sends) of minimal entries,
    ten bytes each on the wire, 200 bytes each once decoded."""
    count = (frame_bytes - 64) // 10
    entries = [[b"a", [2, 0, 0, 0, 0]]] * count
    yield hello()
    yield raw({"type": "manifest", "entries": entries, "last": True})
    yield encode(Bye())


def manifest(times: int = 1, settle_s: float = 0.0) -> Iterator[bytes]:
    """Ask for the agent's manifest (every entry of its own tree) ``times``
    times, after ``settle_s`` (files fresher than the digest cache's racy
    window are not cached: past it, the second request reads the cache the
    first one wrote)."""
    yield encode(Hello(PROTOCOL_VERSION, "bm1", Role.ACTIVE, 1, Purpose.READ, "hostile"))
    time.sleep(settle_s)
    for _ in range(times):
        yield encode(ManifestRequest())
    yield encode(Bye())


def fetch(path: bytes) -> Iterator[bytes]:
    """Ask for a file back (a read session, as ``resume --discard`` does)."""
    yield encode(Hello(PROTOCOL_VERSION, "bm1", Role.ACTIVE, 1, Purpose.READ, "hostile"))
    yield encode(Fetch(path))
    yield encode(Bye())


# Runs the agent as its child and reports the agent's ru_maxrss (wait4). A
# process's ru_maxrss counts the memory of whoever forked it, up to its exec:
# this wrapper is small (no site, nothing imported but os and sys), the test
# or bench that starts it may be large. It keeps no copy of stdin or stdout.
_WRAPPER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
os.close(0)
os.close(1)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def run_agent(config: Path, stream: Iterable[bytes], log: Path, timeout: float = 300) -> AgentRun:
    """Run ``bmsync agent`` with ``config`` (under the wrapper above), write
    ``stream`` to its stdin (stopping if it hangs up), read every frame it
    answers, and wait for it to exit. Killed (its process group, by id)
    after ``timeout`` seconds."""
    started = time.monotonic()
    usage = log.with_suffix(".rusage")
    agent_argv = [sys.executable, "-m", "bmsync", "-c", str(config), "agent"]
    with open(log, "wb") as stderr:
        wrapper = subprocess.Popen(
            [sys.executable, "-S", "-E", "-c", _WRAPPER, str(usage), *agent_argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    assert wrapper.stdin is not None and wrapper.stdout is not None
    stdin = wrapper.stdin
    sent = 0
    write_error = ""

    def write() -> None:
        nonlocal sent, write_error
        try:
            for data in stream:
                stdin.write(data)
                sent += len(data)
        except OSError as exc:  # BrokenPipeError: the agent hung up
            write_error = str(exc)
        finally:
            try:
                stdin.close()
            except OSError as exc:
                write_error = write_error or str(exc)

    killer = threading.Timer(timeout, os.killpg, (wrapper.pid, signal.SIGKILL))
    writer = threading.Thread(target=write, name="hostile-writer")
    killer.start()
    writer.start()
    decoder = FrameDecoder()
    replies: list[Frame] = []
    try:
        while data := os.read(wrapper.stdout.fileno(), WRITE_BYTES):
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                replies.append(frame)
        wrapper.wait()
    finally:
        killer.cancel()
        killer.join()
        if wrapper.returncode is None:
            os.killpg(wrapper.pid, signal.SIGKILL)
            wrapper.wait()
        writer.join()
        wrapper.stdout.close()
    peak_kib, exit_code = (int(n) for n in usage.read_text().split())
    return AgentRun(
        replies=replies,
        exit_code=exit_code,
        peak_kib=peak_kib,
        seconds=time.monotonic() - started,
        sent_bytes=sent,
        stderr=log.read_text(errors="replace"),
        write_error=write_error,
    )
