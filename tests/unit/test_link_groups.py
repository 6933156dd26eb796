"""The names of hard-linked files, as the daemon tracks them between scans."""

from __future__ import annotations

from bmsync.sender.found import LinkGroups


def test_the_other_names_of_an_inode_follow_the_scans() -> None:
    groups = LinkGroups()
    groups.replace({(1, 10): [b"etc/a", b"etc/b"], (1, 11): [b"etc/x", b"etc/y", b"etc/z"]})
    assert groups.others(b"etc/a") == [b"etc/b"]
    assert groups.others(b"etc/y") == [b"etc/x", b"etc/z"]
    assert groups.others(b"etc/single") == []
    # a batch scan finds etc/z with one link now (replaced by a copy)
    groups.update({}, scanned=[b"etc/z"])
    assert groups.others(b"etc/x") == [b"etc/y"]
    # ...and a new name of the first inode
    groups.update({(1, 10): [b"etc/a", b"etc/c"]}, scanned=[b"etc/a", b"etc/c"])
    assert groups.others(b"etc/a") == [b"etc/b", b"etc/c"]
    groups.replace({})
    assert groups.others(b"etc/a") == []
