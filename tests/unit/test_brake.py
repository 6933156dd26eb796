"""The delete-storm brake and what counts as a lost file (bmsync/core/brake.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bmsync.core.brake import SHARE_FLOOR, BrakeLimits, DeleteBrake, lost_files, synced_files
from bmsync.core.manifest import Entry, Kind
from bmsync.core.ops import Delete, Op, PutFile, Symlink


def file(digest: bytes) -> Entry:
    return Entry(Kind.FILE, 0o644, 0, 0, 1, 1, digest.ljust(16, b"\0"))


def link(target: bytes) -> Entry:
    return Entry(Kind.SYMLINK, 0o777, 0, 0, 1, target=target)


DIR = Entry(Kind.DIR, 0o755, 0, 0, 1)


def test_deletions_up_to_the_count_pass_and_one_more_trips() -> None:
    brake = DeleteBrake(BrakeLimits(max_count=10, max_share=1.0, window_s=60))
    assert brake.check(10, 1000, now=0.0) is None
    reason = brake.check(11, 1000, now=0.0)
    assert reason is not None
    assert "11 of 1000 synced files would be deleted within 60 s" in reason
    assert "limits: 10 files or 100%" in reason


def test_deletions_add_up_within_the_window_and_age_out_of_it() -> None:
    brake = DeleteBrake(BrakeLimits(max_count=10, max_share=1.0, window_s=60))
    brake.record(8, now=0.0)
    assert brake.check(3, 1000, now=30.0) is not None  # 8 + 3 within 60 s
    assert brake.check(2, 1000, now=30.0) is None
    assert brake.check(3, 1000, now=60.0) is None  # the 8 are 60 s old: out


def test_the_share_rule_needs_the_floor() -> None:
    brake = DeleteBrake(BrakeLimits(max_count=1000, max_share=0.10, window_s=60))
    # two of five files is 40 %, but no storm
    assert brake.check(2, 5, now=0.0) is None
    assert brake.check(SHARE_FLOOR - 1, 50, now=0.0) is None
    assert brake.check(SHARE_FLOOR, 50, now=0.0) is not None  # 40 % of 50


def test_nothing_deleted_never_trips_and_reset_forgets() -> None:
    brake = DeleteBrake(BrakeLimits(max_count=1, max_share=0.0, window_s=60))
    assert brake.check(0, 0, now=0.0) is None
    brake.record(1, now=0.0)
    assert brake.check(1, 100, now=1.0) is not None
    brake.reset()
    assert brake.check(1, 100, now=1.0) is None


def test_deleting_every_file_of_an_empty_manifest_is_a_full_share() -> None:
    brake = DeleteBrake(BrakeLimits(max_count=1000, max_share=0.5, window_s=60))
    assert brake.check(SHARE_FLOOR, 0, now=0.0) is not None


@given(
    st.lists(st.tuples(st.floats(0, 1000), st.integers(0, 50)), max_size=20),
    st.integers(1, 200),
)
def test_a_trip_is_exactly_the_count_rule_over_the_window(
    records: list[tuple[float, int]], limit: int
) -> None:
    brake = DeleteBrake(BrakeLimits(max_count=limit, max_share=1.0, window_s=100))
    now = 0.0
    for delay, count in records:
        now += delay
        brake.record(count, now)
    recent = sum(c for t, c in _times(records) if t > now - 100)
    tripped = brake.check(1, 10**9, now) is not None
    assert tripped == (recent + 1 > limit)


def _times(records: list[tuple[float, int]]) -> list[tuple[float, int]]:
    out, now = [], 0.0
    for delay, count in records:
        now += delay
        out.append((now, count))
    return out


def test_a_moved_file_is_not_lost_a_removed_one_is() -> None:
    peer = {b"a/x.conf": file(b"x"), b"a/y.conf": file(b"y"), b"a": DIR, b"l": link(b"x")}
    ops: list[Op] = [
        Delete(b"a/x.conf", Kind.FILE),
        Delete(b"a/y.conf", Kind.FILE),
        Delete(b"a", Kind.DIR),
        Delete(b"l", Kind.SYMLINK),
        PutFile(b"b/x.conf", file(b"x")),  # x's content reappears: moved
        Symlink(b"m", link(b"x")),  # so does the link's target
    ]
    assert lost_files(ops, peer) == 1  # y only; directories never count


def test_a_delete_of_something_the_peer_never_had_counts_as_lost() -> None:
    assert lost_files([Delete(b"ghost", Kind.FILE)], {}) == 1


@pytest.mark.parametrize(
    ("manifest", "count"),
    [({}, 0), ({b"d": DIR}, 0), ({b"d": DIR, b"d/f": file(b"f"), b"l": link(b"t")}, 2)],
)
def test_synced_files_counts_files_and_symlinks(manifest: dict[bytes, Entry], count: int) -> None:
    assert synced_files(manifest) == count
