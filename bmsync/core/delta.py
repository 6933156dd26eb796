"""Deltas between two versions of a file (sans I/O).

The active node is the only writer and knows which version the passive
holds, so it computes the delta itself, with no signature round trip:
``make_delta(base, new)`` returns ``Copy`` ranges of the base and
``Literal`` bytes; ``apply_delta(base, ops)`` rebuilds ``new``.

How: the common prefix and suffix are cut first (one edit in a large file
costs only that edit). What remains is split into content-defined chunks
(a chunk ends after a line whose hash has its low bits zero, so an inserted
line does not shift every later boundary; data without newlines falls back
to fixed blocks) and chunks of the new version found in the base are
copied, the rest sent as literals.
"""

from __future__ import annotations

import zlib

import msgspec
import xxhash

# Below this a delta saves too little to be worth it: files go whole.
DELTA_MIN_BYTES = 64 * 1024
# Above this, files go whole: both sides hold base and result in memory.
DELTA_MAX_BYTES = 256 * 1024 * 1024
# A line whose hash has these low bits all zero ends a chunk: chunks of
# about 32 lines (a few KiB of configuration text).
_BOUNDARY_MASK = 0x1F
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

    def content(self, limit: int) -> bytes:
        """The literal bytes, at most ``limit`` of them once inflated."""
        if not self.compressed:
            return self.data
        inflate = zlib.decompressobj()
        try:
            out = inflate.decompress(self.data, limit + 1)
        except zlib.error as exc:
            raise DeltaError(f"literal data is not valid zlib: {exc}") from exc
        if len(out) > limit or inflate.unconsumed_tail:
            raise DeltaError(f"literal data inflates past {limit} bytes")
        return out


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


def chunk_bounds(data: bytes) -> list[tuple[int, int]]:
    """Content-defined chunks of ``data`` as (offset, length)."""
    if not data:
        return []
    if b"\n" not in data:
        return [(o, min(_BLOCK_BYTES, len(data) - o)) for o in range(0, len(data), _BLOCK_BYTES)]
    bounds: list[tuple[int, int]] = []
    start = pos = 0
    for line in data.split(b"\n"):
        pos += len(line) + 1
        if xxhash.xxh3_64_intdigest(line) & _BOUNDARY_MASK == 0 or pos - start >= 16 * _BLOCK_BYTES:
            end = min(pos, len(data))
            if end > start:
                bounds.append((start, end - start))
            start = end
    if start < len(data):
        bounds.append((start, len(data) - start))
    return bounds


def make_delta(base: bytes, new: bytes) -> list[DeltaOp]:
    a, b = memoryview(base), memoryview(new)
    prefix = _common_prefix(a, b)
    suffix = _common_suffix(a, b, min(len(a), len(b)) - prefix)
    ops: list[DeltaOp] = []

    def copy(offset: int, length: int) -> None:
        if length <= 0:
            return
        last = ops[-1] if ops else None
        if isinstance(last, Copy) and last.offset + last.length == offset:
            ops[-1] = Copy(last.offset, last.length + length)
        else:
            ops.append(Copy(offset, length))

    def literal(data: bytes) -> None:
        if not data:
            return
        last = ops[-1] if ops else None
        if isinstance(last, Literal):
            ops[-1] = Literal(last.data + data)
        else:
            ops.append(Literal(data))

    copy(0, prefix)
    base_mid = base[prefix : len(base) - suffix]
    new_mid = new[prefix : len(new) - suffix]
    if len(new_mid) <= _BLOCK_BYTES or not base_mid:
        literal(new_mid)
    else:
        known: dict[bytes, int] = {}
        for offset, length in chunk_bounds(base_mid):
            digest = xxhash.xxh3_128_digest(base_mid[offset : offset + length])
            known.setdefault(digest, prefix + offset)
        for offset, length in chunk_bounds(new_mid):
            piece = new_mid[offset : offset + length]
            found = known.get(xxhash.xxh3_128_digest(piece))
            if found is not None:
                copy(found, length)
            else:
                literal(piece)
    copy(len(base) - suffix, suffix)
    return ops


def apply_delta(base: bytes, ops: list[DeltaOp], limit: int = DELTA_MAX_BYTES) -> bytes:
    """Rebuild the new version; a result larger than ``limit`` is refused
    (a hostile delta must not exhaust the agent's memory)."""
    out = bytearray()
    for op in ops:
        if isinstance(op, Copy):
            if op.offset + op.length > len(base):
                raise DeltaError(
                    f"copy of {op.offset}+{op.length} past the base's {len(base)} bytes"
                )
            out += base[op.offset : op.offset + op.length]
        else:
            out += op.content(limit - len(out))
        if len(out) > limit:
            raise DeltaError(f"the result grows past {limit} bytes")
    return bytes(out)
