"""Deltas: what a one-line edit of a large file costs, and that a delta is
applied only to the base it was made for."""

from __future__ import annotations

import itertools
import random
import zlib

import pytest

from bmsync.core.delta import (
    DELTA_MAX_BYTES,
    MAX_CHUNKS,
    MIN_CHUNK_BYTES,
    Copy,
    DeltaError,
    Literal,
    apply_delta,
    chunk_bounds,
    chunk_floor,
    compress_literals,
    delta_pieces,
    literal_bytes,
    make_delta,
    make_delta_within,
)


def text(lines: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [b"key%d = %s" % (i, b"v" * rng.randrange(10, 90)) for i in range(lines)]


def test_one_line_changed_in_20_mb_of_text_costs_that_line() -> None:
    lines = text(260_000)
    base = b"\n".join(lines) + b"\n"
    assert len(base) > 15_000_000
    lines[123_456] = b"key123456 = changed"
    new = b"\n".join(lines) + b"\n"
    ops = make_delta(base, new)
    assert apply_delta(base, ops) == new
    assert literal_bytes(ops) <= len(b"key123456 = changed") + 100
    assert [type(op) for op in ops] == [Copy, Literal, Copy]


def test_an_inserted_line_does_not_shift_everything_after_it() -> None:
    lines = text(50_000)
    base = b"\n".join(lines) + b"\n"
    for k in range(20):
        lines[k * 2_000 + 7] = b"edited %d" % k
    lines.insert(10_000, b"a brand new line")
    new = b"\n".join(lines) + b"\n"
    ops = make_delta(base, new)
    assert apply_delta(base, ops) == new
    # 21 edits, each costing a chunk or two, not the rest of the file
    assert literal_bytes(ops) < len(new) // 20


def test_binary_data_without_newlines() -> None:
    base = random.Random(3).randbytes(3_000_000)
    new = base[:1_000_000] + b"XYZ" + base[1_000_003:]
    ops = make_delta(base, new)
    assert apply_delta(base, ops) == new
    assert literal_bytes(ops) == 3


def test_identical_empty_and_unrelated() -> None:
    data = b"same\n" * 1000
    assert make_delta(data, data) == [Copy(0, len(data))]
    assert apply_delta(data, make_delta(data, b"")) == b""
    other = random.Random(4).randbytes(50_000)
    ops = make_delta(data, other)
    assert apply_delta(data, ops) == other
    assert literal_bytes(ops) == len(other)


def test_a_copy_past_the_base_is_refused() -> None:
    with pytest.raises(DeltaError, match="past the base's 10 bytes"):
        apply_delta(b"0123456789", [Copy(5, 10)])
    with pytest.raises(ValueError, match="bad copy range"):
        Copy(-1, 3)


def test_chunks_cover_the_data_exactly() -> None:
    data = b"\n".join(text(5_000)) + b"tail without newline"
    bounds = chunk_bounds(data)
    assert bounds[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(bounds))
    assert sum(n for _, n in bounds) == len(data)


def test_literals_are_compressed_when_it_helps() -> None:
    base = b"header\n" + b"x" * 100_000
    new = b"header\n" + b"configuration line\n" * 2_000 + b"x" * 100_000
    ops = compress_literals(make_delta(base, new))
    assert any(isinstance(op, Literal) and op.compressed for op in ops)
    assert literal_bytes(ops) < 2_000
    assert apply_delta(base, ops) == new
    random_bytes = random.Random(5).randbytes(5_000)
    assert compress_literals([Literal(random_bytes)]) == [Literal(random_bytes)]


def test_a_literal_that_inflates_too_far_or_is_not_zlib_is_refused() -> None:
    bomb = Literal(zlib.compress(b"\0" * 10_000_000), compressed=True)
    with pytest.raises(DeltaError, match="inflates past 1000 bytes"):
        apply_delta(b"", [bomb], limit=1000)
    with pytest.raises(DeltaError, match="not valid zlib"):
        apply_delta(b"", [Literal(b"not zlib", compressed=True)])


# -- a hostile delta: bounded by the size it declares, built a piece at a time


def test_pieces_are_bounded_and_inflation_stops_at_the_room_left() -> None:
    bomb = Literal(zlib.compress(bytes(50_000_000), 9), compressed=True)
    got: list[int] = []
    with pytest.raises(DeltaError, match="inflates past 2999000 bytes"):
        for piece in delta_pieces([Copy(0, 1000), bomb], 1000, 3_000_000, piece=1 << 20):
            assert not isinstance(piece, Copy) or piece == Copy(0, 1000)
            got.append(len(piece) if isinstance(piece, bytes) else piece.length)
    # whole pieces up to the limit, then one byte past it asked for and refused
    assert max(got) <= 1 << 20
    assert sum(got) <= 3_000_000


def test_copies_come_in_pieces_within_the_base() -> None:
    pieces = list(delta_pieces([Copy(10, 2_500_000)], 3_000_000, 2_500_000, piece=1 << 20))
    assert pieces == [
        Copy(10, 1 << 20),
        Copy(10 + (1 << 20), 1 << 20),
        Copy(10 + (2 << 20), 402_848),
    ]


def test_a_result_past_the_declared_size_is_refused_before_it_is_built() -> None:
    with pytest.raises(DeltaError, match="grows past 1500 bytes"):
        list(delta_pieces([Copy(0, 1000), Copy(0, 1000)], 1000, 1500))
    with pytest.raises(DeltaError, match="grows past 10 bytes"):
        list(delta_pieces([Literal(b"x" * 11)], 0, 10))


def test_a_truncated_or_padded_zlib_literal_is_refused() -> None:
    packed = zlib.compress(b"configuration line\n" * 1000)
    with pytest.raises(DeltaError, match="truncated zlib stream"):
        apply_delta(b"", [Literal(packed[:-10], compressed=True)])
    with pytest.raises(DeltaError, match="3 bytes follow the literal's zlib stream"):
        apply_delta(b"", [Literal(packed + b"xyz", compressed=True)])
    assert apply_delta(b"", [Literal(packed, compressed=True)]) == b"configuration line\n" * 1000


def two_byte_lines(count: int, seed: int) -> bytes:
    """``count`` lines of one random letter each: the issue's pathological file."""
    letters = random.Random(seed).randbytes(count).translate(bytes(97 + i % 26 for i in range(256)))
    data = bytearray(2 * count)
    data[0::2] = letters
    data[1::2] = b"\n" * count
    return bytes(data)


def covers(bounds: list[tuple[int, int]], size: int) -> bool:
    return (
        bounds[0][0] == 0
        and all(a + n == b for (a, n), (b, _) in itertools.pairwise(bounds))
        and sum(n for _, n in bounds) == size
    )


def test_a_line_inserted_near_the_start_moves_few_boundaries() -> None:
    lines = text(40_000, seed=7)
    base = b"\n".join(lines) + b"\n"
    lines.insert(50, b"an inserted line")
    new = b"\n".join(lines) + b"\n"
    shift = len(b"an inserted line\n")
    old_ends = {a + n for a, n in chunk_bounds(base)}
    new_ends = {a + n - shift for a, n in chunk_bounds(new) if a + n > 1_000}
    # all but the first few boundaries are found again, shifted by the line
    assert len(new_ends - old_ends) <= 3
    assert len(old_ends - new_ends) <= 3


@pytest.mark.parametrize(
    "data",
    [
        two_byte_lines(3_000_000, seed=1),  # 6 MB of "x\n"
        b"a\n" * 3_000_000,  # no line end ever hashes to a boundary
        b"\n" * 6_000_000,
        random.Random(2).randbytes(6_000_000).replace(b"\n", b" "),  # no newline at all
        (b"x" * 300_000 + b"\n") * 20,  # lines longer than the longest chunk
    ],
    ids=["two-byte-lines", "same-line", "newlines", "no-newline", "long-lines"],
)
def test_pathological_inputs_make_a_bounded_number_of_chunks(data: bytes) -> None:
    bounds = chunk_bounds(data)
    assert covers(bounds, len(data))
    assert len(bounds) <= MAX_CHUNKS + 1
    assert len(bounds) <= len(data) // chunk_floor(len(data)) + 1
    assert all(n >= chunk_floor(len(data)) for _, n in bounds[:-1])


def test_the_chunk_count_is_capped_however_large_the_data() -> None:
    assert chunk_floor(100) == MIN_CHUNK_BYTES
    for size in (10**6, 6 * 10**7, DELTA_MAX_BYTES):
        assert size // chunk_floor(size) <= MAX_CHUNKS
    data = two_byte_lines(8_000_000, seed=3)  # 16 MB: the floor doubles
    assert chunk_floor(len(data)) > MIN_CHUNK_BYTES
    assert len(chunk_bounds(data)) <= MAX_CHUNKS + 1


def test_two_byte_lines_changed_at_both_ends_make_a_small_delta() -> None:
    base = two_byte_lines(3_000_000, seed=4)
    new = b"changed\n" + base[2:-2] + b"changed too\n"
    ops = make_delta(base, new)
    assert apply_delta(base, ops) == new
    assert len(ops) <= 5
    assert literal_bytes(ops) < 4 * chunk_floor(len(base)) + 64


def test_a_delta_over_its_budget_is_not_made() -> None:
    base = b"\n".join(text(20_000)) + b"\n"
    rewritten = b"\n".join(text(20_000, seed=9)) + b"\n"
    assert make_delta_within(base, rewritten, max_literal=100_000, max_ops=None) is None
    edited = base.replace(b"key100 =", b"KEY100 =").replace(b"key15000 =", b"KEY15000 =")
    assert make_delta_within(base, edited, max_literal=None, max_ops=4) is None
    ops = make_delta_within(base, edited, max_literal=100_000, max_ops=5)
    assert ops is not None and apply_delta(base, ops) == edited
