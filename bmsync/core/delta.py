"""Deltas between two versions of a file (sans I/O).

The active node is the only writer and knows which version the passive
holds, so it computes the delta itself, with no signature round trip:
``make_delta(base, new)`` returns ``Copy`` ranges of the base and
``Literal`` bytes; ``apply_delta(base, ops)`` rebuilds ``new``, and
``delta_pieces`` yields it a piece at a time for the agent, which writes it
to disk as it comes (bounded by the size the sender declared).

How: the common prefix and suffix are cut first (one edit in a large file
costs only that edit). What remains is split into content-defined chunks
(past a floor, a chunk ends after a line end whose preceding bytes hash
with their low bits zero, so an inserted line does not shift every later
boundary; data without newlines falls back to fixed blocks; see
chunk_bounds for the bounds on its cost) and chunks of the new version
found in the base are copied, the rest sent as literals. With a budget
(``make_delta_within``) a delta that would cost more than the whole file
is given up as soon as that is known.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import msgspec
import xxhash

# Below this a delta saves too little to be worth it: files go whole.
DELTA_MIN_BYTES = 64 * 1024
# Above this, files go whole: the sender holds base and result in memory
# (the agent streams both; see delta_pieces). A delta that declares a larger
# result is refused when its frame is decoded.
DELTA_MAX_BYTES = 256 * 1024 * 1024
# Operations in one delta, checked when its frame is decoded, before any is
# built: each decodes to a Python object of about 100 bytes, so a hostile
# frame of six-byte copies makes at most 7 MiB of them, not the 30 MiB that
# 268,435 took (and ~16 bytes each on the wire keep a delta within a frame).
# make_delta merges neighbouring copies and literals, so its deltas have two
# operations per changed chunk; a delta with more goes as a whole file.
MAX_DELTA_OPS = 65_536
# A delta is applied this many bytes at a time: base ranges read, literal
# data inflated (a zlib literal is never inflated whole).
APPLY_PIECE_BYTES = 1024 * 1024
# A line end whose line (with the lines before it, to _WINDOW_BYTES at
# least) hashes with these low bits all zero ends a chunk (past its floor):
# chunks of the floor and about 32 lines more (a few KiB of configuration).
_BOUNDARY_MASK = 0x1F
_WINDOW_BYTES = 32
# A chunk is at least this long, and there are at most about MAX_CHUNKS of
# them (the floor doubles for larger data; see chunk_floor): chunking costs
# a bounded number of steps whatever the number of lines.
MIN_CHUNK_BYTES = 256
MAX_CHUNKS = 16_384
# Line ends looked at past a chunk's floor before it is cut at its longest
# (max of _MAX_CHUNK_BYTES and _MAX_CHUNK_FLOORS floors).
_MAX_CANDIDATES = 128
_MAX_CHUNK_BYTES = 128 * 1024
_MAX_CHUNK_FLOORS = 32
# Data without newlines is cut into blocks of this size.
_BLOCK_BYTES = 8 * 1024
# Prefix/suffix comparison step.
_STRIDE = 64 * 1024
# Literals shorter than this are not worth compressing.
_COMPRESS_FROM = 256


class Copy(msgspec.Struct, frozen=True, array_like=True, tag=0):
    offset: int
    length: int

    def __post_init__(self) -> None:
        if self.offset < 0 or self.length <= 0:
            raise ValueError(f"bad copy range {self.offset}+{self.length}")


class Literal(msgspec.Struct, frozen=True, array_like=True, tag=1):
    data: bytes
    compressed: bool = False  # zlib; see compress_literals


DeltaOp = Copy | Literal


class DeltaError(ValueError):
    """A delta that does not fit its base."""


def literal_bytes(ops: list[DeltaOp]) -> int:
    """Bytes of literal data as sent (compressed where it is)."""
    return sum(len(op.data) for op in ops if isinstance(op, Literal))


def compress_literals(ops: list[DeltaOp]) -> list[DeltaOp]:
    """zlib each literal where that saves at least a tenth of it."""
    out: list[DeltaOp] = []
    for op in ops:
        if isinstance(op, Literal) and not op.compressed and len(op.data) >= _COMPRESS_FROM:
            packed = zlib.compress(op.data, 6)
            if len(packed) < len(op.data) * 0.9:
                out.append(Literal(packed, compressed=True))
                continue
        out.append(op)
    return out


def _common_prefix(a: memoryview, b: memoryview) -> int:
    limit = min(len(a), len(b))
    pos = 0
    while pos < limit:
        step = min(_STRIDE, limit - pos)
        if a[pos : pos + step] == b[pos : pos + step]:
            pos += step
            continue
        lo, hi = pos, pos + step  # a[lo:hi] != b[lo:hi], a[:lo] == b[:lo]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if a[lo:mid] == b[lo:mid]:
                lo = mid
            else:
                hi = mid
        return lo
    return limit


def _common_suffix(a: memoryview, b: memoryview, limit: int) -> int:
    n = 0
    while n < limit:
        step = min(_STRIDE, limit - n)
        if a[len(a) - n - step : len(a) - n] == b[len(b) - n - step : len(b) - n]:
            n += step
            continue
        lo, hi = n, n + step  # suffixes of length lo agree, of length hi do not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if a[len(a) - mid : len(a) - n] == b[len(b) - mid : len(b) - n]:
                lo = mid
            else:
                hi = mid
        return lo
    return limit


def chunk_floor(size: int) -> int:
    """The smallest chunk of data of ``size`` bytes: ``MIN_CHUNK_BYTES``, or
    the power of two that keeps the chunks under ``MAX_CHUNKS``. A power of
    two: two versions of a file of about the same size chunk alike."""
    floor = MIN_CHUNK_BYTES
    while size // floor > MAX_CHUNKS:
        floor *= 2
    return floor


def chunk_bounds(
    data: bytes, start: int = 0, end: int | None = None, floor: int | None = None
) -> list[tuple[int, int]]:
    """Content-defined chunks of ``data[start:end]`` as (offset, length),
    offsets from ``start``.

    A chunk is at least ``floor`` bytes (``chunk_floor`` of the range by
    default) and ends after the first line past that whose hash (of the
    line, and of the lines before it up to ``_WINDOW_BYTES`` if it is
    shorter) has its low bits zero: so an inserted line shifts only the
    boundaries next to it. Only line ends past the floor are looked at, at
    most ``_MAX_CANDIDATES`` a chunk: past those it ends after the last one
    (with no line end in sight, at its longest: ``_MAX_CHUNK_BYTES`` or
    ``_MAX_CHUNK_FLOORS`` floors). So the cost is a ``find``, an ``rfind``
    and one hash per candidate, never a Python object per line, and there
    are at most ``size // floor + 1`` chunks. Data without newlines is cut
    into fixed blocks."""
    end = len(data) if end is None else end
    size = end - start
    if size <= 0:
        return []
    floor = chunk_floor(size) if floor is None else floor
    if data.find(b"\n", start, end) < 0:
        block = max(_BLOCK_BYTES, floor)
        return [(o, min(block, size - o)) for o in range(0, size, block)]
    longest = max(_MAX_CHUNK_BYTES, floor * _MAX_CHUNK_FLOORS)
    bounds: list[tuple[int, int]] = []
    chunk = start
    while end - chunk > floor:
        limit = min(chunk + longest, end)
        cut = pos = chunk + floor - 1
        for _ in range(_MAX_CANDIDATES):
            pos = data.find(b"\n", pos, limit)
            if pos < 0:
                break
            line = data.rfind(b"\n", start, pos) + 1  # where this line starts
            pos += 1  # the chunk would end after this newline
            # the line, and the lines before it if it is short
            window = data[max(start, min(line, pos - _WINDOW_BYTES)) : pos]
            cut = pos
            if xxhash.xxh3_64_intdigest(window) & _BOUNDARY_MASK == 0:
                break
        if cut < chunk + floor:  # no line end before the longest chunk
            cut = limit
        bounds.append((chunk - start, cut - chunk))
        chunk = cut
    if chunk < end:
        bounds.append((chunk - start, end - chunk))
    return bounds


class _Budget(Exception):
    """The delta costs more than its budget: send the whole file."""


def make_delta(base: bytes, new: bytes) -> list[DeltaOp]:
    ops = make_delta_within(base, new, max_literal=None, max_ops=None)
    assert ops is not None  # no budget: always a delta
    return ops


def make_delta_within(
    base: bytes, new: bytes, max_literal: int | None, max_ops: int | None
) -> list[DeltaOp] | None:
    """``make_delta``, or ``None`` as soon as the delta would have more than
    ``max_literal`` bytes of (uncompressed) literal data or more than
    ``max_ops`` operations: such a delta is not built, the file goes whole.
    Neither version is copied: the middle is chunked and hashed in place."""
    a, b = memoryview(base), memoryview(new)
    prefix = _common_prefix(a, b)
    suffix = _common_suffix(a, b, min(len(a), len(b)) - prefix)
    ops: list[DeltaOp] = []
    pending: list[bytes] = []  # literal pieces not yet joined into ops
    literal_total = 0

    def flush() -> None:
        if pending:
            ops.append(Literal(b"".join(pending)))
            pending.clear()
            if max_ops is not None and len(ops) > max_ops:
                raise _Budget

    def copy(offset: int, length: int) -> None:
        if length <= 0:
            return
        flush()
        last = ops[-1] if ops else None
        if isinstance(last, Copy) and last.offset + last.length == offset:
            ops[-1] = Copy(last.offset, last.length + length)
        else:
            ops.append(Copy(offset, length))
            if max_ops is not None and len(ops) > max_ops:
                raise _Budget

    def literal(start: int, stop: int) -> None:
        nonlocal literal_total
        if stop <= start:
            return
        literal_total += stop - start
        if max_literal is not None and literal_total > max_literal:
            raise _Budget
        pending.append(new[start:stop])

    base_end, new_end = len(base) - suffix, len(new) - suffix
    try:
        copy(0, prefix)
        if new_end - prefix <= _BLOCK_BYTES or base_end <= prefix:
            literal(prefix, new_end)
        else:
            floor = chunk_floor(max(base_end, new_end) - prefix)
            known: dict[bytes, int] = {}
            for offset, length in chunk_bounds(base, prefix, base_end, floor):
                at = prefix + offset
                known.setdefault(xxhash.xxh3_128_digest(a[at : at + length]), at)
            for offset, length in chunk_bounds(new, prefix, new_end, floor):
                at = prefix + offset
                found = known.get(xxhash.xxh3_128_digest(b[at : at + length]))
                if found is not None:
                    copy(found, length)
                else:
                    literal(at, at + length)
        copy(len(base) - suffix, suffix)
        flush()
    except _Budget:
        return None
    return ops


def delta_pieces(
    ops: list[DeltaOp], base_size: int, limit: int, piece: int = APPLY_PIECE_BYTES
) -> Iterator[Copy | bytes]:
    """The result of ``ops`` on a base of ``base_size`` bytes, in order, to be
    written as it comes: ``Copy`` ranges of the base (at most ``piece`` bytes
    each) for the caller to read, and literal bytes (compressed literals
    inflated ``piece`` bytes at a time). Never more than ``limit`` bytes in
    all, and nothing is inflated past that: ``DeltaError`` as soon as a copy
    leaves the base or the result would grow past ``limit``. A result shorter
    than the one expected is the caller's to notice."""
    room = limit
    for op in ops:
        if isinstance(op, Copy):
            if op.offset + op.length > base_size:
                raise DeltaError(
                    f"copy of {op.offset}+{op.length} past the base's {base_size} bytes"
                )
            if op.length > room:
                raise DeltaError(f"the result grows past {limit} bytes")
            room -= op.length
            for start in range(op.offset, op.offset + op.length, piece):
                yield Copy(start, min(piece, op.offset + op.length - start))
        elif not op.compressed:
            if len(op.data) > room:
                raise DeltaError(f"the result grows past {limit} bytes")
            room -= len(op.data)
            if op.data:
                yield op.data
        else:
            for data in _inflate(op.data, room, limit, piece):
                room -= len(data)
                yield data


def _inflate(data: bytes, room: int, limit: int, piece: int) -> Iterator[bytes]:
    """A zlib literal, ``piece`` bytes at a time, never more than ``room``:
    one byte past it is asked for, and refused."""
    inflate = zlib.decompressobj()
    tail = data
    left = room
    try:
        while not inflate.eof:
            out = inflate.decompress(tail, min(piece, left + 1))
            tail = inflate.unconsumed_tail
            if len(out) > left:
                raise DeltaError(
                    f"literal data inflates past {room} bytes "
                    f"(the room left in a result of at most {limit})"
                )
            if not out and not tail:
                break  # input exhausted before the end of the stream
            left -= len(out)
            if out:
                yield out
    except zlib.error as exc:
        raise DeltaError(f"literal data is not valid zlib: {exc}") from exc
    if not inflate.eof:
        raise DeltaError("literal data is a truncated zlib stream")
    if inflate.unused_data:
        raise DeltaError(f"{len(inflate.unused_data)} bytes follow the literal's zlib stream")


def apply_delta(base: bytes, ops: list[DeltaOp], limit: int = DELTA_MAX_BYTES) -> bytes:
    """Rebuild the new version in memory; a result larger than ``limit`` is
    refused before it is built (a hostile delta must not exhaust memory)."""
    out = bytearray()
    for piece in delta_pieces(ops, len(base), limit):
        if isinstance(piece, Copy):
            out += memoryview(base)[piece.offset : piece.offset + piece.length]
        else:
            out += piece
    return bytes(out)
