"""Failed paths are retried with backoff until they land, and count as not
in sync meanwhile."""

from __future__ import annotations

from bmsync.core.retries import Retries


def test_a_failed_path_is_due_after_a_backoff_that_doubles_up_to_a_cap() -> None:
    retries = Retries(first_s=5, max_s=30)
    retries.failed(b"etc/a", "No space left on device", now=100)
    assert retries.take_due(104.9) == [] and retries.next_due() == 105
    waits = []
    now = 100.0
    for _ in range(5):
        due = retries.next_due()
        assert due is not None
        waits.append(due - now)
        now = due
        assert retries.take_due(now) == [b"etc/a"]
        assert retries.take_due(now) == []  # handed back once per failure
        retries.failed(b"etc/a", "No space left on device", now)
    assert waits == [5, 10, 20, 30, 30]


def test_a_failing_path_counts_until_it_lands() -> None:
    retries = Retries()
    retries.failed(b"etc/a", "Read-only file system", now=10)
    retries.failed(b"etc/b", "Operation not permitted", now=12)
    assert len(retries) == 2 and retries.waiting == 2 and retries.oldest() == 10
    assert retries.first() == (b"etc/a", "Read-only file system")
    retries.take_due(100)
    assert retries.waiting == 0 and len(retries) == 2  # in the batcher now, still not in sync
    retries.landed(b"etc/a")
    assert len(retries) == 1 and retries.oldest() == 12
    retries.clear()
    assert not retries and retries.first() is None and retries.next_due() is None
