"""The batcher on hand-written schedules; the clock is the ``now`` argument."""

from __future__ import annotations

import pytest

from bmsync.core.batcher import Batch, Batcher

WINDOW = 0.05
MAX_DELAY = 1.0


def batcher() -> Batcher:
    return Batcher(window_s=WINDOW, max_delay_s=MAX_DELAY)


def test_empty_batcher_has_nothing_to_do() -> None:
    b = batcher()
    assert b.queued == 0
    assert b.oldest() is None
    assert b.next_deadline() is None
    assert b.take(0.0) is None
    assert b.take(1e9) is None


@pytest.mark.parametrize(("window", "max_delay"), [(-0.1, 1.0), (0.0, 0.0), (0.1, -1.0)])
def test_bad_timings_are_rejected(window: float, max_delay: float) -> None:
    with pytest.raises(ValueError):
        Batcher(window_s=window, max_delay_s=max_delay)


def test_max_delay_is_at_least_the_window() -> None:
    b = Batcher(window_s=0.5, max_delay_s=0.1)
    b.add(b"etc/f", 0.0, settled=False)
    assert b.next_deadline() == pytest.approx(0.5)
    assert b.take(0.49) is None
    assert b.take(0.5) == Batch(paths={b"etc/f": False}, oldest_s=0.0)


def test_single_settled_change_goes_out_at_once() -> None:
    b = batcher()
    b.add(b"etc/hosts", 10.0, settled=True)
    assert b.queued == 1
    assert b.oldest() == 10.0
    assert b.next_deadline() == 10.0
    assert b.take(10.0) == Batch(paths={b"etc/hosts": False}, oldest_s=10.0)
    assert b.queued == 0
    assert b.next_deadline() is None
    assert b.oldest() is None
    assert b.take(10.0) is None


def test_burst_while_a_batch_is_in_flight_leaves_in_one_batch() -> None:
    b = batcher()
    b.add(b"etc/first", 0.0, settled=True)
    assert b.take(0.0) == Batch(paths={b"etc/first": False}, oldest_s=0.0)
    # the first batch is being applied: take is not called meanwhile
    paths = [b"etc/burst/%03d" % i for i in range(500)]
    for i, path in enumerate(paths):
        b.add(path, 0.001 + i * 0.0001, settled=True)
    assert b.queued == 500
    assert b.oldest() == 0.001
    assert b.next_deadline() == 0.001  # overdue: ready now
    batch = b.take(0.2)
    assert batch is not None
    assert not batch.rescan
    assert batch.paths == dict.fromkeys(paths, False)
    assert batch.oldest_s == 0.001
    assert b.queued == 0
    assert b.next_deadline() is None
    assert b.take(0.2) is None


def test_burst_mixing_settled_and_written_files_leaves_the_written_ones() -> None:
    b = batcher()
    for i in range(10):
        b.add(b"etc/done/%d" % i, 1.0, settled=True)
        b.add(b"etc/open/%d" % i, 1.0, settled=False)
    batch = b.take(1.01)
    assert batch is not None
    assert set(batch.paths) == {b"etc/done/%d" % i for i in range(10)}
    assert b.queued == 10
    assert b.oldest() == 1.0
    assert b.next_deadline() == pytest.approx(1.0 + WINDOW)
    batch = b.take(1.0 + WINDOW)
    assert batch is not None
    assert set(batch.paths) == {b"etc/open/%d" % i for i in range(10)}
    assert b.queued == 0


def test_continuously_written_file_is_released_at_the_max_delay() -> None:
    b = batcher()
    path = b"var/log/busy"
    released: list[tuple[float, Batch]] = []
    episode_start: float | None = None
    for i in range(1000):  # 5 s of a modify every 5 ms
        now = i * 0.005
        # an idle caller sleeps until the deadline, or until the next event
        while (deadline := b.next_deadline()) is not None and deadline <= now:
            assert episode_start is not None
            assert b.take(deadline - 1e-6) is None  # not a moment before
            batch = b.take(deadline)
            assert batch == Batch(paths={path: False}, oldest_s=episode_start)
            assert deadline == pytest.approx(episode_start + MAX_DELAY)
            released.append((deadline, batch))
            episode_start = None
        if episode_start is None:
            episode_start = now
        b.add(path, now, settled=False)
        assert b.take(now) is None
    assert [at for at, _ in released] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert b.queued == 1


def test_continuously_written_file_is_not_taken_before_the_max_delay() -> None:
    b = batcher()
    for i in range(200):  # writes every 5 ms up to 0.995 s
        b.add(b"etc/f", i * 0.005, settled=False)
    assert b.next_deadline() == pytest.approx(MAX_DELAY)
    assert b.take(MAX_DELAY - 1e-6) is None
    assert b.take(MAX_DELAY) == Batch(paths={b"etc/f": False}, oldest_s=0.0)


def test_unsettled_path_waits_for_a_quiet_window() -> None:
    b = batcher()
    b.add(b"etc/f", 0.0, settled=False)
    assert b.next_deadline() == pytest.approx(WINDOW)
    assert b.take(WINDOW / 2) is None
    b.add(b"etc/f", 0.03, settled=False)  # another write pushes it back
    assert b.next_deadline() == pytest.approx(0.03 + WINDOW)
    assert b.take(WINDOW) is None
    assert b.take(0.03 + WINDOW - 1e-6) is None
    assert b.queued == 1
    assert b.take(0.03 + WINDOW) == Batch(paths={b"etc/f": False}, oldest_s=0.0)
    assert b.queued == 0


def test_close_after_writes_makes_a_path_ready_at_once() -> None:
    b = batcher()
    b.add(b"etc/f", 0.0, settled=False)
    b.add(b"etc/f", 0.01, settled=False)
    b.add(b"etc/f", 0.02, settled=True)  # close-write
    deadline = b.next_deadline()
    assert deadline is not None
    assert deadline <= 0.02  # due now
    assert b.take(0.02) == Batch(paths={b"etc/f": False}, oldest_s=0.0)


def test_later_write_unsettles_a_settled_path() -> None:
    b = batcher()
    b.add(b"etc/f", 0.0, settled=True)
    b.add(b"etc/f", 0.01, settled=False)  # written again before it was taken
    assert b.next_deadline() == pytest.approx(0.01 + WINDOW)
    assert b.take(0.01) is None
    assert b.take(0.01 + WINDOW) == Batch(paths={b"etc/f": False}, oldest_s=0.0)


def test_zero_window_releases_a_write_at_its_event() -> None:
    b = Batcher(window_s=0.0, max_delay_s=1.0)
    b.add(b"etc/f", 2.0, settled=False)
    assert b.next_deadline() == 2.0
    assert b.take(2.0) == Batch(paths={b"etc/f": False}, oldest_s=2.0)


def test_take_leaves_paths_that_are_not_ready() -> None:
    b = batcher()
    b.add(b"etc/slow", 0.0, settled=False)
    b.add(b"etc/fast", 0.01, settled=True)
    assert b.oldest() == 0.0
    assert b.take(0.01) == Batch(paths={b"etc/fast": False}, oldest_s=0.01)
    assert b.queued == 1
    assert b.oldest() == 0.0
    assert b.next_deadline() == pytest.approx(WINDOW)
    assert b.take(WINDOW) == Batch(paths={b"etc/slow": False}, oldest_s=0.0)


def test_take_reports_the_oldest_first_event() -> None:
    b = batcher()
    b.add(b"etc/a", 3.0, settled=True)
    b.add(b"etc/b", 3.5, settled=True)
    b.add(b"etc/a", 4.0, settled=True)
    batch = b.take(4.0)
    assert batch is not None
    assert batch.oldest_s == 3.0
    assert set(batch.paths) == {b"etc/a", b"etc/b"}


def test_deep_is_sticky_within_an_episode() -> None:
    b = batcher()
    b.add(b"etc/d", 0.0, settled=True, deep=True)  # a directory moved in
    b.add(b"etc/d", 0.01, settled=True, deep=False)  # then a chmod on it
    b.add(b"etc/e", 0.01, settled=True, deep=False)
    b.add(b"etc/e", 0.02, settled=False, deep=True)
    b.add(b"etc/e", 0.03, settled=True, deep=False)
    assert b.take(0.03) == Batch(paths={b"etc/d": True, b"etc/e": True}, oldest_s=0.0)
    # a new episode starts shallow again
    b.add(b"etc/d", 0.04, settled=True)
    assert b.take(0.04) == Batch(paths={b"etc/d": False}, oldest_s=0.04)


def test_rescan_replaces_pending_paths() -> None:
    b = batcher()
    b.add(b"etc/a", 1.0, settled=False)
    b.add(b"etc/b", 2.0, settled=True, deep=True)
    b.rescan(3.0)
    assert b.queued == 1  # the paths are dropped: the reconcile covers them
    assert b.oldest() == 1.0  # the lag still counts from the oldest of them
    assert b.next_deadline() == 3.0  # due at once, whatever is pending
    b.add(b"etc/c", 3.5, settled=False)  # covered by the reconcile too, not kept
    assert b.queued == 1
    b.rescan(4.0)  # a second overflow changes nothing
    assert b.next_deadline() == 3.0
    assert b.take(4.0) == Batch(rescan=True, oldest_s=1.0)
    assert b.queued == 0
    assert b.oldest() is None
    assert b.next_deadline() is None
    assert b.take(10.0) is None


def test_rescan_on_an_empty_queue() -> None:
    b = batcher()
    b.rescan(5.0)
    assert b.queued == 1
    assert b.oldest() == 5.0
    assert b.next_deadline() == 5.0
    assert b.take(5.0) == Batch(rescan=True, oldest_s=5.0)
    assert b.queued == 0


def test_events_after_a_rescan_batch_go_in_the_next_batch() -> None:
    b = batcher()
    b.rescan(1.0)
    assert b.take(1.0) == Batch(rescan=True, oldest_s=1.0)
    b.add(b"etc/a", 1.5, settled=True)
    assert b.take(1.5) == Batch(paths={b"etc/a": False}, oldest_s=1.5)


def test_overdue_deadline_means_now() -> None:
    b = batcher()
    b.add(b"etc/a", 0.0, settled=False)
    deadline = b.next_deadline()
    assert deadline is not None
    assert b.take(deadline + 100.0) == Batch(paths={b"etc/a": False}, oldest_s=0.0)


def test_lone_delete_goes_out_after_the_window() -> None:
    b = batcher()
    b.add(b"etc/gone", 1.0, settled=True, delete=True)
    assert b.queued == 1
    assert b.next_deadline() == pytest.approx(1.0 + WINDOW)
    assert b.take(1.0) is None
    assert b.take(1.0 + WINDOW - 1e-6) is None
    assert b.take(1.0 + WINDOW) == Batch(paths={b"etc/gone": False}, oldest_s=1.0)
    assert b.queued == 0


def test_delete_storm_leaves_as_one_batch() -> None:
    """``rm -rf``: an idle caller that wakes at every event sees nothing
    until deletions stop for the window, then the whole storm at once."""
    b = batcher()
    paths = [b"etc/tree/%03d" % i for i in range(300)]
    for i, path in enumerate(paths):
        now = i * 0.001
        b.add(path, now, settled=True, delete=True)
        assert b.take(now) is None
        assert b.next_deadline() == pytest.approx(now + WINDOW)
    last = (len(paths) - 1) * 0.001
    assert b.take(last + WINDOW - 1e-6) is None
    batch = b.take(last + WINDOW)
    assert batch is not None
    assert batch.paths == dict.fromkeys(paths, False)
    assert batch.oldest_s == 0.0
    assert b.queued == 0


def test_endless_delete_storm_still_respects_the_max_delay() -> None:
    b = batcher()
    taken: dict[bytes, float] = {}
    first: dict[bytes, float] = {}
    for i in range(300):  # a deletion every 10 ms for 3 s
        now = i * 0.01
        while (deadline := b.next_deadline()) is not None and deadline <= now:
            batch = b.take(deadline)
            assert batch is not None
            taken.update(dict.fromkeys(batch.paths, deadline))
        path = b"etc/tree/%03d" % i
        first[path] = now
        b.add(path, now, settled=True, delete=True)
    assert min(taken.values()) == pytest.approx(MAX_DELAY)  # nothing left before
    for path, at in taken.items():
        assert at - first[path] <= MAX_DELAY + 1e-9
        assert at - first[path] == pytest.approx(MAX_DELAY)


def test_deletes_do_not_hold_back_other_changes() -> None:
    b = batcher()
    b.add(b"etc/gone", 0.0, settled=True, delete=True)
    b.add(b"etc/edited", 0.0, settled=True)
    assert b.take(0.0) == Batch(paths={b"etc/edited": False}, oldest_s=0.0)
    assert b.take(WINDOW) == Batch(paths={b"etc/gone": False}, oldest_s=0.0)


def test_another_delete_pushes_back_a_pending_delete() -> None:
    b = batcher()
    b.add(b"etc/a", 0.0, settled=True, delete=True)
    b.add(b"etc/b", 0.03, settled=True, delete=True)
    assert b.next_deadline() == pytest.approx(0.03 + WINDOW)
    assert b.take(WINDOW) is None
    batch = b.take(0.03 + WINDOW)
    assert batch is not None
    assert set(batch.paths) == {b"etc/a", b"etc/b"}


def test_the_latest_event_decides_whether_a_path_is_deleted() -> None:
    b = batcher()
    b.add(b"etc/f", 0.0, settled=True, delete=True)
    b.add(b"etc/f", 0.01, settled=True)  # recreated and closed: no longer a delete
    assert b.take(0.01) == Batch(paths={b"etc/f": False}, oldest_s=0.0)
    b.add(b"etc/g", 1.0, settled=False)
    b.add(b"etc/g", 1.01, settled=True, delete=True)  # written, then removed
    assert b.next_deadline() == pytest.approx(1.01 + WINDOW)
    assert b.take(1.01) is None
    assert b.take(1.01 + WINDOW) == Batch(paths={b"etc/g": False}, oldest_s=1.0)


def test_a_batch_the_link_lost_is_queued_again_as_old_as_it_was() -> None:
    b = batcher()
    b.add(b"etc/a", 1.0, settled=True)
    b.add(b"etc/d", 1.5, settled=True, deep=True)
    taken = b.take(2.0)
    assert taken is not None and b.queued == 0
    b.add(b"etc/a", 3.0, settled=False)  # written again while in flight
    b.requeue(taken)  # the link died before the answer
    assert b.queued == 2 and b.oldest() == 1.0  # the lag goes on from the first change
    # a/ is still being written, but its first change is older than max_delay
    again = b.take(3.0)
    assert again is not None and again.paths == {b"etc/a": False, b"etc/d": True}
    assert again.oldest_s == 1.0


def test_a_lost_batch_folds_into_a_pending_rescan() -> None:
    b = batcher()
    b.add(b"etc/a", 1.0, settled=True)
    taken = b.take(1.0)
    assert taken is not None
    b.rescan(2.0)  # an overflow meanwhile
    b.requeue(taken)
    assert b.queued == 1 and b.oldest() == 1.0
    assert (rescan := b.take(2.0)) is not None and rescan.rescan
