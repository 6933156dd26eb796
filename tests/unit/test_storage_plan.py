"""What ``bmsync ha storage mount|unmount`` decides before anything runs:
which entries to mount or unmount and in which order, the commands, and
every reason to refuse (a device the peer holds, a missing device, a mount
point holding something else, a peer that cannot be asked)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from bmsync.config.model import StorageConfig
from bmsync.core.mounts import DeviceHere, DeviceNumber, Mount, parse_mountinfo
from bmsync.ha.storage_plan import (
    AlreadyMounted,
    MountPlan,
    PeerMounts,
    PeerUnknown,
    ToMount,
    UnmountPlan,
    fsck_argv,
    fsck_verdict,
    mount_argv,
    plan_mount,
    plan_unmount,
)

CYRUS = StorageConfig(
    Path("/dev/disk/by-uuid/0b6e"), Path("/var/spool/cyrus"), "ext4", ("noatime", "nodiratime")
)
META = StorageConfig(Path("/dev/disk/by-uuid/1c7f"), Path("/var/spool/cyrus/meta"), "xfs")
SHARED = StorageConfig(Path("/dev/mapper/shared"), Path("/srv/shared"), "gfs2", shared=True)
ENTRIES = (CYRUS, META, SHARED)

NUMBERS: dict[StorageConfig, DeviceNumber] = {CYRUS: (253, 0), META: (253, 1), SHARED: (253, 2)}
ROOT = Mount(22, 1, (8, 1), "/", PurePosixPath("/"), ("rw",), "ext4", "/dev/sda1")
FREE_PEER = PeerMounts("bm2")
MISSING = "no such device on this node: is the storage attached here (lsblk)?"


def devices(*missing: StorageConfig) -> dict[str, DeviceHere]:
    """Each entry's device as this node resolves it; ``missing`` are not here."""
    return {
        str(e.device): DeviceHere(None, MISSING) if e in missing else DeviceHere(NUMBERS[e])
        for e in ENTRIES
    }


def mounted(
    entry: StorageConfig, point: str | None = None, mount_id: int = 40, root: str = "/"
) -> Mount:
    """``entry``'s device mounted at ``point`` (its configured mount point),
    named by its /dev/mapper path as mountinfo shows it."""
    return Mount(
        mount_id,
        22,
        NUMBERS[entry],
        root,
        PurePosixPath(point or str(entry.mount)),
        ("rw",),
        entry.fstype,
        f"/dev/dm-{NUMBERS[entry][1]}",
    )


def other(point: str, fstype: str = "ext4", source: str = "/dev/sdc1", mount_id: int = 90) -> Mount:
    """Something ha.storage does not list, mounted at ``point``."""
    return Mount(mount_id, 22, (8, 33), "/", PurePosixPath(point), ("rw",), fstype, source)


def reasons(plan: MountPlan | UnmountPlan) -> str:
    return "\n".join(r.reason for r in plan.refused)


# -- mount ----------------------------------------------------------------


def test_everything_is_mounted_in_the_configured_order() -> None:
    plan = plan_mount(ENTRIES, devices(), [ROOT], FREE_PEER, peer_is_down=False)
    assert plan.refused == []
    assert plan.peer_assumed_down == ""
    assert [s.entry for s in plan.steps] == [CYRUS, META, SHARED]
    assert all(isinstance(s, ToMount) for s in plan.steps)
    first = plan.steps[0]
    assert isinstance(first, ToMount)
    assert first.fsck == ["e2fsck", "-p", "/dev/disk/by-uuid/0b6e"]
    assert first.mount == [
        "mount",
        "-t",
        "ext4",
        "-o",
        "noatime,nodiratime",
        "/dev/disk/by-uuid/0b6e",
        "/var/spool/cyrus",
    ]


def test_a_device_mounted_on_its_mount_point_is_already_mounted() -> None:
    # mountinfo names the device /dev/dm-0, the configuration by its uuid:
    # the device number says it is the same
    here = [ROOT, mounted(CYRUS)]
    plan = plan_mount(ENTRIES, devices(), here, FREE_PEER, peer_is_down=False)
    assert plan.refused == []
    assert plan.steps[0] == AlreadyMounted(CYRUS)
    assert [type(s) for s in plan.steps[1:]] == [ToMount, ToMount]


def test_a_missing_device_refuses_with_why() -> None:
    plan = plan_mount(ENTRIES, devices(META), [ROOT], FREE_PEER, peer_is_down=False)
    ((refused),) = plan.refused
    assert refused.entry == META
    assert "/dev/disk/by-uuid/1c7f" in refused.reason
    assert "no such device" in refused.reason
    assert [s.entry for s in plan.steps] == [CYRUS, SHARED]


def test_a_mount_point_holding_another_device_refuses() -> None:
    here = [ROOT, other("/var/spool/cyrus", source="/dev/sdc1")]
    plan = plan_mount(ENTRIES, devices(), here, FREE_PEER, peer_is_down=False)
    ((refused),) = plan.refused
    assert refused.entry == CYRUS
    for words in ("/var/spool/cyrus", "/dev/sdc1", "/dev/disk/by-uuid/0b6e", "umount"):
        assert words in refused.reason


def test_a_device_mounted_elsewhere_here_refuses() -> None:
    here = [ROOT, mounted(CYRUS, "/mnt/rescue")]
    plan = plan_mount(ENTRIES, devices(), here, FREE_PEER, peer_is_down=False)
    ((refused),) = plan.refused
    assert refused.entry == CYRUS
    assert "already mounted here on /mnt/rescue" in refused.reason
    assert "umount /mnt/rescue" in refused.reason


def test_a_shared_device_may_be_mounted_elsewhere_here() -> None:
    here = [ROOT, mounted(SHARED, "/mnt/other")]
    plan = plan_mount((SHARED,), devices(), here, FREE_PEER, peer_is_down=False)
    assert plan.refused == []
    assert [type(s) for s in plan.steps] == [ToMount]


def test_a_device_the_peer_has_mounted_refuses_even_if_said_down() -> None:
    peer = PeerMounts("bm2", mounted={"/dev/disk/by-uuid/0b6e": ("/var/spool/cyrus", "/srv/b")})
    for peer_is_down in (False, True):
        plan = plan_mount(ENTRIES, devices(), [ROOT], peer, peer_is_down)
        ((refused),) = plan.refused
        assert refused.entry == CYRUS
        for words in ("peer bm2", "/var/spool/cyrus, /srv/b", "on bm2", "fence bm2"):
            assert words in refused.reason
        assert "--peer-is-down does not apply" in refused.reason
        assert "split-brain" not in refused.reason
        assert [s.entry for s in plan.steps] == [META, SHARED]


def test_a_device_mounted_here_and_on_the_peer_is_a_split_brain() -> None:
    peer = PeerMounts("bm2", mounted={"/dev/disk/by-uuid/0b6e": ("/var/spool/cyrus",)})
    plan = plan_mount(ENTRIES, devices(), [ROOT, mounted(CYRUS)], peer, peer_is_down=False)
    ((refused),) = plan.refused
    assert "split-brain" in refused.reason


def test_a_peer_that_cannot_be_asked_refuses_unless_said_down() -> None:
    peer = PeerUnknown("root@bm2:22: connection refused")
    plan = plan_mount(ENTRIES, devices(), [ROOT], peer, peer_is_down=False)
    assert [r.entry for r in plan.refused] == [CYRUS, META]
    for refused in plan.refused:
        assert "cannot ask the peer" in refused.reason
        assert "connection refused" in refused.reason
        assert "add --peer-is-down" in refused.reason
    # the cluster filesystem needs no answer from the peer
    assert [s.entry for s in plan.steps] == [SHARED]
    assert plan.peer_assumed_down == ""


def test_a_peer_said_down_lets_the_mount_proceed_and_says_so() -> None:
    peer = PeerUnknown("root@bm2:22: no route to host")
    plan = plan_mount(ENTRIES, devices(), [ROOT], peer, peer_is_down=True)
    assert plan.refused == []
    assert [s.entry for s in plan.steps] == [CYRUS, META, SHARED]
    assert plan.peer_assumed_down == "root@bm2:22: no route to host"


def test_only_a_cluster_filesystem_leaves_the_peer_assumed_up() -> None:
    plan = plan_mount((SHARED,), devices(), [ROOT], PeerUnknown("x"), peer_is_down=True)
    assert plan.peer_assumed_down == ""


def test_a_shared_entry_skips_the_peer_check() -> None:
    peer = PeerMounts("bm2", mounted={"/dev/mapper/shared": ("/srv/shared",)})
    plan = plan_mount(ENTRIES, devices(), [ROOT], peer, peer_is_down=False)
    assert plan.refused == []
    assert [s.entry for s in plan.steps] == [CYRUS, META, SHARED]


def test_every_reason_is_given_at_once() -> None:
    here = [ROOT, other("/var/spool/cyrus")]
    peer = PeerMounts("bm2", mounted={"/dev/disk/by-uuid/1c7f": ("/var/spool/cyrus/meta",)})
    plan = plan_mount(ENTRIES, devices(), here, peer, peer_is_down=False)
    assert [r.entry for r in plan.refused] == [CYRUS, META]


@pytest.mark.parametrize(
    ("fstype", "argv"),
    [
        ("ext2", ["e2fsck", "-p", "/dev/sdb1"]),
        ("ext3", ["e2fsck", "-p", "/dev/sdb1"]),
        ("ext4", ["e2fsck", "-p", "/dev/sdb1"]),
        ("xfs", ["xfs_repair", "-n", "/dev/sdb1"]),
        ("btrfs", ["fsck", "-t", "btrfs", "-a", "/dev/sdb1"]),
        ("vfat", ["fsck", "-t", "vfat", "-a", "/dev/sdb1"]),
    ],
)
def test_the_check_per_filesystem(fstype: str, argv: list[str]) -> None:
    assert fsck_argv(StorageConfig(Path("/dev/sdb1"), Path("/srv/d"), fstype)) == argv


def test_no_check_when_fsck_is_false_or_not_the_default() -> None:
    unchecked = (
        StorageConfig(Path("/dev/sdb1"), Path("/srv/a"), "ext4", fsck=False),
        StorageConfig(Path("/dev/sdb2"), Path("/srv/b"), "btrfs"),
    )
    checked = StorageConfig(Path("/dev/sdb3"), Path("/srv/c"), "btrfs", fsck=True)
    numbers = {"/dev/sdb1": (8, 17), "/dev/sdb2": (8, 18), "/dev/sdb3": (8, 19)}
    found = {path: DeviceHere(number) for path, number in numbers.items()}
    plan = plan_mount((*unchecked, checked), found, [ROOT], FREE_PEER, peer_is_down=False)
    fscks = [s.fsck for s in plan.steps if isinstance(s, ToMount)]
    assert fscks == [None, None, ["fsck", "-t", "btrfs", "-a", "/dev/sdb3"]]


def test_mount_options_are_joined_by_commas() -> None:
    entry = StorageConfig(Path("/dev/sdb1"), Path("/srv/d"), "xfs", ("noatime", "inode64", "ro"))
    assert mount_argv(entry) == [
        "mount",
        "-t",
        "xfs",
        "-o",
        "noatime,inode64,ro",
        "/dev/sdb1",
        "/srv/d",
    ]
    assert mount_argv(META) == [
        "mount",
        "-t",
        "xfs",
        "/dev/disk/by-uuid/1c7f",
        "/var/spool/cyrus/meta",
    ]


# -- fsck's verdict ---------------------------------------------------------

EXT4 = StorageConfig(Path("/dev/sdb1"), Path("/srv/d"), "ext4")
XFS = StorageConfig(Path("/dev/sdb2"), Path("/srv/x"), "xfs")
DIRTY_LOG = (
    "ERROR: The filesystem has valuable metadata changes in a log which needs to be "
    "replayed.  Mount the filesystem to replay the log, and unmount it before re-running "
    "xfs_repair."
)


@pytest.mark.parametrize("status", [0, 1, 2])
def test_fsck_clean_or_fixed_may_mount(status: int) -> None:
    assert fsck_verdict(EXT4, status, "") is None


@pytest.mark.parametrize("status", [4, 6, None])
def test_fsck_errors_left_refuse_with_the_command_to_run_by_hand(status: int | None) -> None:
    verdict = fsck_verdict(EXT4, status, "UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY.")
    assert verdict is not None
    assert "fsck -t ext4 -f /dev/sdb1" in verdict
    assert "by hand" in verdict
    assert "both nodes" in verdict


@pytest.mark.parametrize("status", [8, 12])
def test_fsck_that_could_not_run_refuses(status: int) -> None:
    verdict = fsck_verdict(EXT4, status, "/dev/sdb1 is in use.")
    assert verdict is not None
    assert f"the check of {EXT4.device} could not run" in verdict
    assert "wrong fstype" in verdict and "in use" in verdict


def test_xfs_clean_may_mount_damage_refuses() -> None:
    assert fsck_verdict(XFS, 0, "") is None
    verdict = fsck_verdict(XFS, 1, "bad magic number")
    assert verdict is not None
    assert "xfs_repair /dev/sdb2" in verdict
    assert "by hand" in verdict


@pytest.mark.parametrize("status", [1, 2])
def test_xfs_with_a_dirty_log_may_mount(status: int) -> None:
    # the mount replays the log; xfs_repair -n cannot
    assert fsck_verdict(XFS, status, DIRTY_LOG) is None


# -- unmount --------------------------------------------------------------


def points(plan: UnmountPlan) -> list[str]:
    return [str(s.mount_point) for s in plan.steps]


def test_unmount_goes_in_reverse_order_nested_deepest_first() -> None:
    here = [
        ROOT,
        mounted(CYRUS, mount_id=40),
        mounted(META, mount_id=41),
        mounted(SHARED, mount_id=42),
    ]
    plan = plan_unmount(ENTRIES, devices(), here)
    assert points(plan) == ["/srv/shared", "/var/spool/cyrus/meta", "/var/spool/cyrus"]
    assert [s.entry for s in plan.steps] == [SHARED, META, CYRUS]
    assert plan.refused == []
    assert plan.not_mounted == []


def test_every_mount_of_the_device_is_unmounted_deepest_first() -> None:
    here = [
        ROOT,
        mounted(CYRUS, mount_id=40),
        mounted(CYRUS, "/var/spool/cyrus/imap-bind", mount_id=43, root="/imap"),
        mounted(CYRUS, "/srv/a/b/c/bound", mount_id=44, root="/imap"),
        mounted(META, mount_id=41),
    ]
    plan = plan_unmount((CYRUS, META), devices(), here)
    assert plan.refused == []
    assert points(plan)[0] == "/var/spool/cyrus/meta"
    cyrus = [s for s in plan.steps if s.entry == CYRUS]
    assert [str(s.mount_point) for s in cyrus][-1] == "/var/spool/cyrus"
    assert {str(s.mount_point) for s in cyrus} == {
        "/var/spool/cyrus",
        "/var/spool/cyrus/imap-bind",
        "/srv/a/b/c/bound",
    }
    assert str(cyrus[0].mount_point) == "/srv/a/b/c/bound"


def test_a_foreign_mount_under_a_mount_point_refuses() -> None:
    here = [
        ROOT,
        mounted(CYRUS),
        mounted(META, mount_id=41),
        other("/var/spool/cyrus/backup", "nfs"),
    ]
    plan = plan_unmount((CYRUS, META), devices(), here)
    ((refused),) = plan.refused
    assert refused.entry == CYRUS
    assert "/var/spool/cyrus has mount(s) under it" in refused.reason
    assert "/var/spool/cyrus/backup" in refused.reason
    assert "/var/spool/cyrus/meta" not in refused.reason  # it is unmounted first
    assert "unmount them first" in refused.reason


def test_a_mount_under_the_mount_point_of_an_entry_not_being_unmounted_refuses() -> None:
    # META is under CYRUS but its device is gone and something else is there
    here = [ROOT, mounted(CYRUS), other("/var/spool/cyrus/meta", "ext4")]
    plan = plan_unmount((CYRUS, META), devices(META), here)
    assert plan.not_mounted == [META]
    ((refused),) = plan.refused
    assert "/var/spool/cyrus/meta" in refused.reason


def test_a_gone_device_is_unmounted_if_its_filesystem_type_is_there() -> None:
    here = [ROOT, other("/var/spool/cyrus", "ext4", "/dev/dm-0")]
    plan = plan_unmount((CYRUS,), devices(CYRUS), here)
    assert points(plan) == ["/var/spool/cyrus"]
    assert plan.not_mounted == []


@pytest.mark.parametrize("here", [[ROOT], [ROOT, other("/var/spool/cyrus", "nfs")]])
def test_a_gone_device_with_nothing_of_its_type_there_is_not_mounted(here: list[Mount]) -> None:
    plan = plan_unmount((CYRUS,), devices(CYRUS), here)
    assert plan.steps == []
    assert plan.not_mounted == [CYRUS]


def test_entries_not_mounted_are_listed_in_reverse_order() -> None:
    plan = plan_unmount(ENTRIES, devices(), [ROOT, mounted(META, mount_id=41)])
    assert points(plan) == ["/var/spool/cyrus/meta"]
    assert plan.not_mounted == [SHARED, CYRUS]
    assert plan.refused == []


def test_unmount_plan_from_the_kernels_text() -> None:
    here = parse_mountinfo(
        "22 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 253:0 / /var/spool/cyrus rw shared:30 - ext4 /dev/mapper/cyrus rw\n"
        "41 40 253:1 / /var/spool/cyrus/meta rw shared:31 - xfs /dev/mapper/meta rw\n"
        "45 40 0:60 / /var/spool/cyrus/my\\040nfs rw - nfs4 nas:/x rw\n"
    )
    plan = plan_unmount((CYRUS, META), devices(), here)
    assert points(plan) == ["/var/spool/cyrus/meta", "/var/spool/cyrus"]
    ((refused),) = plan.refused
    assert "/var/spool/cyrus/my nfs" in refused.reason


def test_a_device_mounted_twice_on_its_mount_point_is_unmounted_twice() -> None:
    # one umount removes the top mount only: the device would stay mounted
    here = [ROOT, mounted(CYRUS, mount_id=40), mounted(CYRUS, mount_id=46)]
    plan = plan_unmount((CYRUS,), devices(), here)
    assert points(plan) == ["/var/spool/cyrus", "/var/spool/cyrus"]
    assert plan.refused == []


def test_a_foreign_mount_over_the_mount_point_refuses() -> None:
    # umount would remove the nfs mount on top, not the device under it
    here = [ROOT, mounted(CYRUS), other("/var/spool/cyrus", "nfs", "nas:/spool", mount_id=91)]
    plan = plan_unmount((CYRUS,), devices(), here)
    ((refused),) = plan.refused
    assert refused.entry == CYRUS
    for words in ("nas:/spool", "nfs", "over /dev/disk/by-uuid/0b6e", "umount /var/spool/cyrus"):
        assert words in refused.reason


def test_a_mount_under_the_device_on_its_mount_point_is_left_alone() -> None:
    # a tmpfs mounted there before the device: umount removes the device only
    here = [ROOT, other("/var/spool/cyrus", "tmpfs", "tmpfs", mount_id=39), mounted(CYRUS)]
    plan = plan_unmount((CYRUS,), devices(), here)
    assert points(plan) == ["/var/spool/cyrus"]
    assert plan.refused == []


def test_a_device_mounted_twice_with_a_foreign_mount_under_refuses_once() -> None:
    here = [ROOT, mounted(CYRUS), mounted(CYRUS, mount_id=46), other("/var/spool/cyrus/x")]
    plan = plan_unmount((CYRUS,), devices(), here)
    ((refused),) = plan.refused
    assert "/var/spool/cyrus/x" in refused.reason
