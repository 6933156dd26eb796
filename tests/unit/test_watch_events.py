"""What each watchdog event means for the sync set (bmsync/sender/events.py)."""

from __future__ import annotations

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
)

from bmsync.core.excludes import Rule, SyncSet
from bmsync.sender.events import EventMapper, EventMeaning

ROOT = "/srv/bm1"
MAPPER = EventMapper(
    ROOT.encode(),
    SyncSet.build(["/etc", "/usr/share/bm/cert.pem"], [Rule("*.swp"), Rule("cache/")]),
)


def test_a_file_written_is_unsettled_until_closed() -> None:
    assert MAPPER.meaning(FileCreatedEvent(f"{ROOT}/etc/a.conf")) == EventMeaning(
        [(b"etc/a.conf", False, False, False)]
    )
    assert MAPPER.meaning(FileModifiedEvent(f"{ROOT}/etc/a.conf")).changes == [
        (b"etc/a.conf", False, False, False)
    ]
    assert MAPPER.meaning(FileClosedEvent(f"{ROOT}/etc/a.conf")).changes == [
        (b"etc/a.conf", True, False, False)
    ]
    assert MAPPER.meaning(FileAttribEvent(f"{ROOT}/etc/a.conf")).changes == [
        (b"etc/a.conf", True, False, False)
    ]


def test_a_move_reports_both_paths_in_one_meaning() -> None:
    assert MAPPER.meaning(FileMovedEvent(f"{ROOT}/etc/a.tmp", f"{ROOT}/etc/a.conf")).changes == [
        (b"etc/a.tmp", True, False, False),
        (b"etc/a.conf", True, False, False),
    ]
    # a directory moved in may have filled before its watch existed: deep
    assert MAPPER.meaning(DirMovedEvent(f"{ROOT}/etc/old", f"{ROOT}/etc/new")).changes == [
        (b"etc/old", True, True, False),
        (b"etc/new", True, True, False),
    ]


def test_a_move_out_of_the_sync_set_is_a_change_of_its_source_only() -> None:
    assert MAPPER.meaning(FileMovedEvent(f"{ROOT}/etc/a.conf", f"{ROOT}/tmp/a.conf")).changes == [
        (b"etc/a.conf", True, False, False)
    ]


def test_new_directories_are_deep_and_deletes_are_marked() -> None:
    assert MAPPER.meaning(DirCreatedEvent(f"{ROOT}/etc/new")).changes == [
        (b"etc/new", True, True, False)
    ]
    assert MAPPER.meaning(FileDeletedEvent(f"{ROOT}/etc/a.conf")).changes == [
        (b"etc/a.conf", True, False, True)
    ]
    assert MAPPER.meaning(DirDeletedEvent(f"{ROOT}/etc/sub")) == EventMeaning(
        [(b"etc/sub", True, True, True)]
    )
    assert MAPPER.meaning(DirAttribEvent(f"{ROOT}/etc/sub")).changes == [
        (b"etc/sub", True, False, False)
    ]


def test_a_watched_tree_removed_means_events_were_lost() -> None:
    meaning = MAPPER.meaning(DirDeletedEvent(f"{ROOT}/etc"))
    assert meaning.changes == [(b"etc", True, True, True)]
    assert meaning.lost == f"watched tree {ROOT}/etc removed"


def test_outside_the_root_the_tops_or_excluded_nothing_changes() -> None:
    for event in (
        FileModifiedEvent("/srv/bm1-other/etc/a.conf"),  # a sibling of the root
        FileModifiedEvent(f"{ROOT}/var/log/syslog"),  # not under a top
        FileModifiedEvent(f"{ROOT}/usr/share/bm/other.pem"),  # beside a single-file top
        FileModifiedEvent(f"{ROOT}/etc/.a.conf.swp"),  # excluded by a rule
        FileCreatedEvent(f"{ROOT}/etc/cache/x"),  # below an excluded directory
        DirCreatedEvent(ROOT),  # the root itself
    ):
        assert MAPPER.meaning(event) == EventMeaning(), event


def test_a_single_file_top_is_followed() -> None:
    assert MAPPER.meaning(FileClosedEvent(f"{ROOT}/usr/share/bm/cert.pem")).changes == [
        (b"usr/share/bm/cert.pem", True, False, False)
    ]
