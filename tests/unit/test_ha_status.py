"""``bmsync ha status``, its pure parts: the state of each ``ha.storage``
mount, where cyrus's data lives, and which findings are problems an
administrator must look at (a clean passive node has none)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bmsync.config.model import StorageConfig
from bmsync.core.mounts import DeviceHere, DeviceNumber, Mount, parse_mountinfo
from bmsync.core.observations import VipCheckFailed, VipSeen
from bmsync.ha.fence_tools import Power
from bmsync.ha.fencing import Outcome
from bmsync.ha.services import Ran
from bmsync.ha.status import (
    HaReport,
    MountState,
    PlaceState,
    cyrus_places,
    power_state,
    problems,
    service_states,
    storage_states,
    vip_state,
)

CYRUS = StorageConfig(Path("/dev/disk/by-uuid/0b6e"), Path("/var/spool/cyrus"), "ext4")
META = StorageConfig(Path("/dev/disk/by-uuid/1c7f"), Path("/var/spool/cyrus/meta"), "xfs")
ENTRIES = (CYRUS, META)
NUMBERS: dict[StorageConfig, DeviceNumber] = {CYRUS: (253, 0), META: (253, 1)}

ROOT_LINE = "22 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n"
CYRUS_LINE = "40 22 253:0 / /var/spool/cyrus rw shared:30 - ext4 /dev/mapper/cyrus rw\n"
META_LINE = "41 40 253:1 / /var/spool/cyrus/meta rw shared:31 - xfs /dev/mapper/meta rw\n"


def devices(*missing: StorageConfig) -> dict[str, DeviceHere]:
    return {
        str(e.device): DeviceHere(None, "no such device")
        if e in missing
        else DeviceHere(NUMBERS[e])
        for e in ENTRIES
    }


def mounts(text: str) -> list[Mount]:
    return parse_mountinfo(ROOT_LINE + text)


def report(
    *,
    vip: VipSeen | VipCheckFailed | None = None,
    lines: str = "",
    missing: tuple[StorageConfig, ...] = (),
    power: Outcome | None = None,
    services: list[Ran] | None = None,
) -> HaReport:
    """The report ``collect`` would make from what this node sees."""
    here = mounts(lines)
    found = HaReport("bm1")
    if vip is not None:
        found.vip = vip_state("10.0.0.10", "eth0", vip)
    found.storage = storage_states(ENTRIES, here, devices(*missing))
    found.cyrus = cyrus_places(here)
    if power is not None:
        found.peer_power = power_state(power)
    if services is not None:
        found.services = service_states(services)
    return found


FAILING = [Ran("systemctl is-active bluemind", 3, "inactive", 0.1), Ran("true", 0, "", 0.0)]
PASSING = [Ran("systemctl is-active bluemind", 0, "active", 0.1)]
POWER_READ = Outcome(True, Power.ON, "the peer's power is on")


# -- storage states ---------------------------------------------------------


def test_storage_mounted_here() -> None:
    states = storage_states(ENTRIES, mounts(CYRUS_LINE + META_LINE), devices())
    assert states == [
        MountState(
            "/var/spool/cyrus",
            "/dev/disk/by-uuid/0b6e",
            mounted_here=True,
            present=True,
            holds="/dev/mapper/cyrus",
            fstype="ext4",
        ),
        MountState(
            "/var/spool/cyrus/meta",
            "/dev/disk/by-uuid/1c7f",
            mounted_here=True,
            present=True,
            holds="/dev/mapper/meta",
            fstype="xfs",
        ),
    ]


def test_storage_not_mounted() -> None:
    states = storage_states(ENTRIES, mounts(""), devices())
    assert [(s.mounted_here, s.present, s.holds, s.fstype) for s in states] == [
        (False, True, "", ""),
        (False, True, "", ""),
    ]


def test_a_mount_point_holding_another_device_is_not_mounted_here() -> None:
    lines = "40 22 8:33 / /var/spool/cyrus rw - nfs4 nas:/spool rw\n"
    (state, _) = storage_states(ENTRIES, mounts(lines), devices())
    assert not state.mounted_here
    assert (state.holds, state.fstype, state.network) == ("nas:/spool", "nfs4", True)


def test_a_missing_device_is_neither_present_nor_mounted() -> None:
    (state, _) = storage_states(ENTRIES, mounts(CYRUS_LINE), devices(CYRUS))
    assert not state.present
    assert not state.mounted_here
    assert state.holds == "/dev/mapper/cyrus"


# -- where cyrus's data lives -----------------------------------------------


def test_cyrus_on_the_root_filesystem() -> None:
    assert cyrus_places(mounts("")) == [
        PlaceState("/var/spool/cyrus", "/", "ext4", False),
        PlaceState("/var/lib/cyrus", "/", "ext4", False),
    ]


def test_cyrus_on_the_deepest_mount_above_it() -> None:
    lines = "30 22 0:50 / /var/spool rw - nfs nas:/spool rw\n" + CYRUS_LINE
    places = cyrus_places(mounts(lines))
    assert places[0] == PlaceState("/var/spool/cyrus", "/var/spool/cyrus", "ext4", False)
    places = cyrus_places(mounts("30 22 0:50 / /var/spool rw - nfs nas:/spool rw\n"))
    assert places[0] == PlaceState("/var/spool/cyrus", "/var/spool", "nfs", True)
    assert places[1].mount_point == "/"


def test_no_mount_table_no_places() -> None:
    assert cyrus_places([]) == []


# -- problems ---------------------------------------------------------------


def test_a_clean_passive_node_has_no_problem() -> None:
    # nothing mounted, services stopped (their checks fail), VIP not held
    passive = report(
        vip=VipSeen(held=False, other_macs=("52:54:00:aa:bb:cc",)),
        power=POWER_READ,
        services=FAILING,
    )
    assert problems(passive) == []


def test_a_clean_active_node_has_no_problem() -> None:
    active = report(
        vip=VipSeen(held=True),
        lines=CYRUS_LINE + META_LINE,
        power=POWER_READ,
        services=PASSING,
    )
    assert problems(active) == []


def test_a_vip_held_here_and_answered_by_other_macs() -> None:
    (problem,) = problems(report(vip=VipSeen(True, ("52:54:00:aa:bb:cc", "52:54:00:dd:ee:ff"))))
    for words in ("10.0.0.10", "52:54:00:aa:bb:cc, 52:54:00:dd:ee:ff", "two nodes", "vip down"):
        assert words in problem


def test_a_vip_check_that_failed() -> None:
    (problem,) = problems(report(vip=VipCheckFailed("eth0: no such interface")))
    assert "VIP check failed" in problem
    assert "no such interface" in problem


def test_a_mount_point_holding_another_device() -> None:
    lines = "40 22 8:33 / /var/spool/cyrus rw - ext4 /dev/sdc1 rw\n"
    (problem,) = problems(report(lines=lines))
    for words in ("/var/spool/cyrus", "/dev/sdc1", "/dev/disk/by-uuid/0b6e", "ha.storage"):
        assert words in problem


def test_half_mounted_storage() -> None:
    (problem,) = problems(report(lines=CYRUS_LINE))
    assert "half mounted" in problem
    assert "/var/spool/cyrus mounted" in problem
    assert "/var/spool/cyrus/meta not" in problem
    assert "bmsync ha storage mount" in problem


def test_a_cluster_filesystem_mounted_on_both_nodes_holds_no_resource() -> None:
    """gfs2/ocfs2 (shared: true) is mounted on the passive node too: neither
    half-mounted storage nor a sign that this node holds the resources."""
    shared = StorageConfig(Path("/dev/disk/by-uuid/0b6e"), Path("/var/spool/cyrus"), "gfs2")
    shared = replace(shared, shared=True)
    line = "40 22 253:0 / /var/spool/cyrus rw - gfs2 /dev/mapper/cyrus rw\n"
    found = HaReport("bm2")
    found.storage = storage_states(
        (shared, META),
        mounts(line),
        {str(shared.device): DeviceHere((253, 0)), str(META.device): DeviceHere((253, 1))},
    )
    found.services = service_states(FAILING)
    assert found.storage[0].mounted_here and found.storage[0].shared
    assert problems(found) == []


def test_cyrus_on_a_network_filesystem() -> None:
    lines = "30 22 0:50 / /var/lib rw - nfs4 nas:/lib rw\n"
    (problem,) = problems(report(lines=lines))
    for words in ("/var/lib/cyrus", "nfs4", "/var/lib", "network filesystem"):
        assert words in problem


def test_cyrus_on_sshfs() -> None:
    lines = "30 22 0:51 / /var/spool/cyrus rw - fuse.sshfs u@h:/ rw\n"
    found = problems(report(lines=lines))
    assert any("fuse.sshfs" in p and "/var/spool/cyrus" in p for p in found)


def test_a_bmc_that_cannot_be_read() -> None:
    outcome = Outcome(False, Power.UNKNOWN, "ipmitool: unable to establish IPMI v2 session")
    (problem,) = problems(report(power=outcome))
    assert "BMC cannot be read" in problem
    assert "unable to establish" in problem
    assert "fencing would fail" in problem


@pytest.mark.parametrize(
    ("vip", "lines"),
    [(VipSeen(held=True), ""), (VipSeen(held=False), CYRUS_LINE + META_LINE)],
    ids=["vip-held", "storage-mounted"],
)
def test_failing_services_on_the_node_holding_the_resources(vip: VipSeen, lines: str) -> None:
    (problem,) = problems(report(vip=vip, lines=lines, services=FAILING))
    assert "holds the resources" in problem
    assert "systemctl is-active bluemind" in problem
    assert problem.endswith("failed: systemctl is-active bluemind")  # not the passing one


def test_every_problem_is_reported_at_once() -> None:
    busy = report(
        vip=VipSeen(True, ("52:54:00:aa:bb:cc",)),
        lines=CYRUS_LINE + "30 22 0:50 / /var/lib rw - nfs nas:/lib rw\n",
        power=Outcome(False, Power.UNKNOWN, "timeout"),
        services=FAILING,
    )
    assert len(problems(busy)) == 5


def test_the_report_as_a_dict_holds_the_problems() -> None:
    passive = report(vip=VipSeen(held=False))
    passive.problems = problems(passive)
    shown = passive.as_dict()
    assert shown["node"] == "bm1"
    assert shown["vip"] == {
        "address": "10.0.0.10",
        "interface": "eth0",
        "held": False,
        "other_macs": [],
    }
    assert shown["storage"][0]["mount"] == "/var/spool/cyrus"
    assert shown["problems"] == []
