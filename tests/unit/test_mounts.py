"""The mount table as the kernel writes it (/proc/self/mountinfo, proc(5)):
parsed with its octal escapes, and the questions the storage steps ask of
it (what is visible on a mount point, every mount of a device, what is
under a mount point, which filesystem holds a path)."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bmsync.core.errors import LocalFsError
from bmsync.core.mounts import Mount, containing, holding, parse_mountinfo, under, visible_at

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
30 22 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=4000k
40 22 253:0 / /var/spool/cyrus rw,noatime shared:30 - ext4 /dev/mapper/cyrus rw
41 40 253:1 / /var/spool/cyrus/meta rw,relatime shared:31 master:2 - xfs /dev/mapper/meta rw
50 22 0:50 / /mnt/backup rw,relatime - nfs4 nas:/export rw,vers=4.2
51 22 0:51 / /home/u/remote rw,nosuid - fuse.sshfs u@host:/ rw,user_id=0
60 22 253:0 /imap /srv/bind rw shared:30 - ext4 /dev/mapper/cyrus rw
"""


def at(mounts: list[Mount], point: str) -> Mount:
    found = visible_at(mounts, PurePosixPath(point))
    assert found is not None, point
    return found


def test_every_field_of_a_line() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 7
    assert mounts[2] == Mount(
        mount_id=40,
        parent_id=22,
        device=(253, 0),
        root="/",
        mount_point=PurePosixPath("/var/spool/cyrus"),
        options=("rw", "noatime"),
        fstype="ext4",
        source="/dev/mapper/cyrus",
    )
    # two optional fields, then the separator
    assert at(mounts, "/var/spool/cyrus/meta").fstype == "xfs"
    # no optional field at all
    assert at(mounts, "/mnt/backup").source == "nas:/export"
    # a bind mount of a directory of the filesystem
    assert at(mounts, "/srv/bind").root == "/imap"


def test_kernel_order_is_kept_and_blank_lines_are_skipped() -> None:
    mounts = parse_mountinfo("\n" + MOUNTINFO + "\n\n")
    assert [m.mount_id for m in mounts] == [22, 30, 40, 41, 50, 51, 60]
    assert parse_mountinfo("") == []


@pytest.mark.parametrize(
    ("escaped", "name"),
    [
        (r"/mnt/my\040disk", "/mnt/my disk"),
        (r"/mnt/tab\011bed", "/mnt/tab\tbed"),
        (r"/mnt/new\012line", "/mnt/new\nline"),
        (r"/mnt/back\134slash", "/mnt/back\\slash"),
        # an escaped backslash followed by digits is not a second escape
        (r"/mnt/\134040", "/mnt/\\040"),
        ("/mnt/caf\u00e9 \u65e5\u672c", "/mnt/caf\u00e9 \u65e5\u672c"),
    ],
)
def test_the_escapes_of_proc5_are_undone(escaped: str, name: str) -> None:
    escaped = escaped.replace(" ", r"\040")
    line = f"70 22 8:17 / {escaped} rw - ext4 /dev/sdb1 rw"
    (mount,) = parse_mountinfo(line)
    assert mount.mount_point == PurePosixPath(name)


def test_escapes_in_the_root_source_and_fstype() -> None:
    (mount,) = parse_mountinfo(
        r"70 22 8:17 /a\040dir /mnt/x rw - fuse.my\040fs host:/my\040share rw"
    )
    assert mount.root == "/a dir"
    assert mount.fstype == "fuse.my fs"
    assert mount.source == "host:/my share"


@pytest.mark.parametrize(
    "bad",
    [
        "not a mount line",
        "22 1 8:1 / / rw shared:1 ext4 /dev/sda1 rw",  # no separator
        "x 1 8:1 / / rw - ext4 /dev/sda1 rw",  # mount id not a number
        "22 1 8-1 / / rw - ext4 /dev/sda1 rw",  # device not major:minor
        "22 1 8:1 / / rw - ext4",  # no source after the separator
        "22 1 8:1 / - rw ext4 /dev/sda1 rw",  # separator before the optional fields
    ],
)
def test_a_malformed_line_is_named_by_its_number(bad: str) -> None:
    text = MOUNTINFO + bad + "\n"
    with pytest.raises(LocalFsError) as caught:
        parse_mountinfo(text, "/proc/self/mountinfo")
    message = str(caught.value)
    assert "/proc/self/mountinfo line 8" in message
    assert "proc(5)" in message
    assert bad[:20] in message


def test_the_error_names_the_file_read() -> None:
    with pytest.raises(LocalFsError, match="/tmp/mi line 1"):
        parse_mountinfo("garbage\n", "/tmp/mi")


def test_a_mount_point_named_with_other_line_breaks_still_parses() -> None:
    # the kernel escapes only space, tab, newline and backslash: a carriage
    # return, a form feed or U+2028 in a directory name is written as is
    names = ["/mnt/a\rb", "/mnt/a\x0cb", "/mnt/a\x85b", "/mnt/a\u2028b", "/mnt/a\x1cb"]
    text = "".join(
        f"{70 + i} 22 8:17 / {name} rw - ext4 /dev/sdb1 rw\n" for i, name in enumerate(names)
    )
    mounts = parse_mountinfo(text)
    assert [str(m.mount_point) for m in mounts] == names


def test_visible_at_is_the_last_mount_made_on_the_point() -> None:
    mounts = parse_mountinfo(MOUNTINFO + "80 40 0:60 / /var/spool/cyrus rw - nfs nas:/spool rw\n")
    seen = at(mounts, "/var/spool/cyrus")
    assert (seen.mount_id, seen.fstype) == (80, "nfs")
    assert visible_at(mounts, PurePosixPath("/var/spool")) is None
    assert at(mounts, "/").mount_id == 22


def test_holding_lists_every_mount_of_the_device_bind_mounts_included() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [str(m.mount_point) for m in holding(mounts, (253, 0))] == [
        "/var/spool/cyrus",
        "/srv/bind",
    ]
    assert holding(mounts, (253, 9)) == []
    assert at(mounts, "/srv/bind").holds((253, 0))
    assert not at(mounts, "/srv/bind").holds((253, 1))


def test_under_is_strictly_below_the_mount_point() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    below = under(mounts, PurePosixPath("/var/spool/cyrus"))
    assert [str(m.mount_point) for m in below] == ["/var/spool/cyrus/meta"]
    assert under(mounts, PurePosixPath("/var/spool/cyrus/meta")) == []
    # a sibling whose name starts alike is not under it
    sibling = parse_mountinfo("90 22 8:2 / /var/spool/cyrus2 rw - ext4 /dev/sda2 rw")
    assert under(sibling, PurePosixPath("/var/spool/cyrus")) == []
    assert len(under(mounts, PurePosixPath("/"))) == 6


def test_containing_is_the_deepest_mount_point_above_the_path() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert at(mounts, "/").mount_id == 22
    found = containing(mounts, PurePosixPath("/var/spool/cyrus/meta/db/x"))
    assert found is not None and found.mount_id == 41
    found = containing(mounts, PurePosixPath("/var/spool/cyrus/user"))
    assert found is not None and found.mount_id == 40
    found = containing(mounts, PurePosixPath("/var/lib/cyrus"))
    assert found is not None and found.mount_id == 22
    found = containing(mounts, PurePosixPath("/var/spool/cyrus"))
    assert found is not None and found.mount_id == 40
    assert containing([], PurePosixPath("/var")) is None


def test_containing_takes_the_last_mount_made_on_the_deepest_point() -> None:
    mounts = parse_mountinfo(MOUNTINFO + "80 40 0:60 / /var/spool/cyrus rw - nfs nas:/s rw\n")
    found = containing(mounts, PurePosixPath("/var/spool/cyrus/user"))
    assert found is not None and found.fstype == "nfs"


@pytest.mark.parametrize(
    ("fstype", "network"),
    [
        ("nfs", True),
        ("nfs4", True),
        ("cifs", True),
        ("fuse.sshfs", True),
        ("fuse", True),
        ("ext4", False),
        ("xfs", False),
        ("gfs2", False),
        ("tmpfs", False),
    ],
)
def test_network_filesystems(fstype: str, network: bool) -> None:
    (mount,) = parse_mountinfo(f"70 22 0:70 / /mnt/x rw - {fstype} src rw")
    assert mount.network is network


# -- property: the kernel's escaping round-trips -----------------------------

# what the kernel escapes in mountinfo (fs/proc_namespace.c: " \t\n\\")
KERNEL_ESCAPES = {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}


def kernel_escape(name: str) -> str:
    return "".join(KERNEL_ESCAPES.get(c, c) for c in name)


components = st.text(
    alphabet=st.one_of(
        st.sampled_from(" \t\n\\0123456789-"),
        st.characters(codec="utf-8", exclude_characters="/\0"),
    ),
    min_size=1,
    max_size=12,
).filter(lambda c: c not in (".", ".."))

optional_fields = st.lists(
    st.one_of(
        st.builds(lambda n: f"shared:{n}", st.integers(1, 999)),
        st.builds(lambda n: f"master:{n}", st.integers(1, 999)),
        st.builds(lambda n: f"propagate_from:{n}", st.integers(1, 999)),
        st.just("unbindable"),
    ),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.lists(components, max_size=4), optional_fields), min_size=1, max_size=4)
)
def test_kernel_escaped_mount_points_parse_back(
    lines: list[tuple[list[str], list[str]]],
) -> None:
    text = ""
    for number, (parts, optional) in enumerate(lines):
        point = "/" + "/".join(parts)
        extra = "".join(f"{field} " for field in optional)
        text += f"{100 + number} 1 8:{number} / {kernel_escape(point)} rw,relatime {extra}"
        text += "- ext4 /dev/sda1 rw\n"
    mounts = parse_mountinfo(text)
    assert [m.mount_point for m in mounts] == [
        PurePosixPath("/" + "/".join(parts)) for parts, _ in lines
    ]
    assert [m.device for m in mounts] == [(8, n) for n in range(len(lines))]
    assert all(m.fstype == "ext4" and m.source == "/dev/sda1" for m in mounts)
    assert all(m.options == ("rw", "relatime") for m in mounts)
