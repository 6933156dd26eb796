"""Any delta rebuilds exactly the new version from its base; any delta at
all (hostile) builds nothing past its limit and reads nothing past its base,
and a delta frame decodes only within its bounds."""

from __future__ import annotations

import zlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bmsync.core.codec import decode_body
from bmsync.core.delta import (
    DELTA_MAX_BYTES,
    MAX_DELTA_OPS,
    Copy,
    DeltaError,
    DeltaOp,
    Literal,
    apply_delta,
    chunk_bounds,
    compress_literals,
    delta_pieces,
    literal_bytes,
    make_delta,
    make_delta_within,
)
from bmsync.core.errors import ProtocolError
from bmsync.core.frames import PutDelta
from bmsync.core.manifest import DIGEST_SIZE, Entry, Kind

lines = st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=300)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=20_000), st.binary(max_size=20_000))
def test_round_trip_on_any_bytes(base: bytes, new: bytes) -> None:
    ops = make_delta(base, new)
    assert apply_delta(base, ops) == new
    assert literal_bytes(ops) <= len(new)


@settings(max_examples=300, deadline=None)
@given(lines, st.data())
def test_round_trip_on_edited_text(base_lines: list[bytes], data: st.DataObject) -> None:
    new_lines = list(base_lines)
    for _ in range(data.draw(st.integers(0, 10))):
        where = data.draw(st.integers(0, len(new_lines)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        line = data.draw(st.binary(max_size=40).filter(lambda b: b"\n" not in b))
        if action == "insert" or not new_lines:
            new_lines.insert(where, line)
        elif action == "delete":
            del new_lines[min(where, len(new_lines) - 1)]
        else:
            new_lines[min(where, len(new_lines) - 1)] = line
    base = b"\n".join(base_lines * 40)
    new = b"\n".join(new_lines * 40)
    assert apply_delta(base, make_delta(base, new)) == new


# -- any delta, however hostile: bounded by its base and by the declared size


def reference(base: bytes, ops: list[DeltaOp]) -> bytes | None:
    """The result with nothing bounded (small inputs only), or None if the
    delta is invalid: a copy outside the base, a literal not exactly one
    whole zlib stream."""
    out = b""
    for op in ops:
        if isinstance(op, Copy):
            if op.offset + op.length > len(base):
                return None
            out += base[op.offset : op.offset + op.length]
        elif op.compressed:
            inflate = zlib.decompressobj()
            try:
                out += inflate.decompress(op.data) + inflate.flush()
            except zlib.error:
                return None
            if not inflate.eof or inflate.unused_data:
                return None
        else:
            out += op.data
    return out


def literals() -> st.SearchStrategy[Literal]:
    raw = st.binary(max_size=300).map(Literal)
    zeros = st.integers(0, 50_000).map(lambda n: zlib.compress(bytes(n), 9))
    packed = st.one_of(st.binary(max_size=2_000).map(zlib.compress), zeros)
    damaged = st.tuples(packed, st.integers(-20, 20), st.binary(max_size=3)).map(
        lambda t: t[0][: len(t[0]) + t[1]] + t[2] if t[1] < 0 else t[0] + t[2][: t[1]]
    )
    return st.one_of(
        raw,
        st.one_of(packed, damaged, st.binary(max_size=50)).map(lambda d: Literal(d, True)),
    )


def ops_for(base_size: int) -> st.SearchStrategy[list[DeltaOp]]:
    copies = st.builds(Copy, st.integers(0, base_size + 5), st.integers(1, base_size + 5))
    return st.lists(st.one_of(copies, literals()), max_size=12)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3_000), st.data(), st.integers(0, 60_000), st.integers(1, 5_000))
def test_pieces_never_build_past_the_limit_nor_read_past_the_base(
    base: bytes, data: st.DataObject, limit: int, piece: int
) -> None:
    ops = data.draw(ops_for(len(base)))
    expected = reference(base, ops)
    built = 0
    out = bytearray()
    try:
        for part in delta_pieces(ops, len(base), limit, piece):
            if isinstance(part, Copy):
                assert 0 < part.length <= piece
                assert part.offset + part.length <= len(base)
                out += base[part.offset : part.offset + part.length]
            else:
                out += part
            built = len(out)
            assert built <= limit
    except DeltaError:
        assert expected is None or len(expected) > limit
        assert expected is None or out == expected[: len(out)]
        return
    assert expected is not None and bytes(out) == expected
    assert apply_delta(base, ops, limit) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5_000), st.binary(max_size=5_000), st.integers(1, 20_000))
def test_a_limit_below_the_result_is_refused_and_at_it_applies(
    base: bytes, new: bytes, cut: int
) -> None:
    ops = compress_literals(make_delta(base, new))
    assert apply_delta(base, ops, len(new)) == new
    if cut <= len(new):
        with pytest.raises(DeltaError):
            apply_delta(base, ops, len(new) - cut)


@settings(max_examples=12, deadline=None)
@given(
    st.integers(MAX_DELTA_OPS - 2, MAX_DELTA_OPS + 2),
    st.integers(DELTA_MAX_BYTES - 2, DELTA_MAX_BYTES + 2),
)
def test_a_delta_frame_decodes_only_within_its_bounds(count: int, size: int) -> None:
    ops = msgspec.msgpack.encode([Copy(0, 1)] * count)
    entry = msgspec.msgpack.encode(Entry(Kind.FILE, 0o644, 0, 0, 0, size, b"d" * DIGEST_SIZE))
    body = msgspec.msgpack.encode(
        {"type": "delta", "path": b"etc/x", "base": b"b" * DIGEST_SIZE, "ops": None, "entry": 0}
    )
    body = body.replace(b"\xa3ops\xc0", b"\xa3ops" + ops).replace(
        b"\xa5entry\x00", b"\xa5entry" + entry
    )
    if count <= MAX_DELTA_OPS and size <= DELTA_MAX_BYTES:
        frame = decode_body(body)
        assert isinstance(frame, PutDelta) and len(frame.ops) == count
    else:
        with pytest.raises(ProtocolError):
            decode_body(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=20_000), st.sampled_from([1, 16, 256, 4096]), st.data())
def test_chunks_cover_any_range_and_respect_the_floor(
    data: bytes, floor: int, draw: st.DataObject
) -> None:
    start = draw.draw(st.integers(0, len(data)))
    end = draw.draw(st.integers(start, len(data)))
    bounds = chunk_bounds(data, start, end, floor)
    assert sum(n for _, n in bounds) == end - start
    assert [a for a, _ in bounds] == [sum(n for _, n in bounds[:i]) for i in range(len(bounds))]
    assert all(n >= floor for _, n in bounds[:-1])
    assert len(bounds) <= (end - start) // floor + 1


@settings(max_examples=200, deadline=None)
@given(lines, lines, st.integers(0, 3_000), st.integers(1, 8))
def test_a_delta_within_budget_is_exact_or_not_made(
    base_lines: list[bytes], new_lines: list[bytes], max_literal: int, max_ops: int
) -> None:
    base = b"\n".join(base_lines * 30)
    new = b"\n".join(new_lines * 30)
    ops = make_delta_within(base, new, max_literal, max_ops)
    if ops is not None:
        assert apply_delta(base, ops) == new
        assert literal_bytes(ops) <= max_literal and len(ops) <= max_ops
    unbounded = make_delta(base, new)
    if literal_bytes(unbounded) <= max_literal and len(unbounded) <= max_ops:
        assert ops == unbounded
