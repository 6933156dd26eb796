"""The ``ha:`` section (issue 13): the VIP with its prefix and ARP settings,
the shared storage mounted on the active node, and the services on it.
Every refusal names the file, the exact line and the dotted key."""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bmsync.config.model import HaConfig, ServicesConfig, StorageConfig, VipConfig
from bmsync.config.parse import parse
from bmsync.core.errors import ConfigError
from bmsync.core.storage import (
    CLUSTER_FSTYPES,
    NETWORK_FSTYPES,
    cyrus_path_of,
    fsck_by_default,
    is_network_fstype,
)

SOURCE = Path("/etc/bmsync/bmsync.yaml")

FULL = """\
node: bm1
ha:
  vip:
    address: 10.0.0.10
    prefix: 24
    interface: eth0
    check_interval_s: 2.5
    arp_count: 3
    arp_interval_ms: 100
  storage:
    - device: /dev/disk/by-uuid/0b6e
      mount: /var/spool/cyrus
      fstype: ext4
      options: [noatime, nodiratime]
    - device: /dev/disk/by-uuid/1c7f
      mount: /var/spool/cyrus/meta
      fstype: xfs
      fsck: false
    - device: /dev/mapper/shared
      mount: /srv/shared
      fstype: gfs2
      shared: true
  services:
    start: ["bmctl start"]
    stop: ["bmctl stop", "sync"]
    check: ["bmctl status"]
    timeout_s: 120
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, SOURCE)
    return str(info.value)


def assert_error(text: str, line: int, key: str, *words: str) -> str:
    message = error_of(text)
    assert message.startswith(f"{SOURCE} line {line}: {key}: "), message
    for word in words:
        assert word in message, message
    return message


def with_storage(entries: str) -> str:
    """A config whose line 4 is the first line of ``entries``."""
    return "node: bm1\nha:\n  storage:\n" + entries


def entry(mount: str, fstype: str = "ext4", device: str = "/dev/sdb1", **more: str) -> str:
    """One storage item: device on its first line, mount on the next, fstype
    on the third, then ``more`` one per line."""
    lines = [f"    - device: {device}\n", f"      mount: {mount}\n", f"      fstype: {fstype}\n"]
    lines += [f"      {k}: {v}\n" for k, v in more.items()]
    return "".join(lines)


# --- valid configurations and defaults -------------------------------------------


def test_full_ha_section_decodes() -> None:
    conf = parse(FULL, SOURCE)
    assert conf.ha == HaConfig(
        vip=VipConfig(
            address="10.0.0.10",
            interface="eth0",
            check_interval_s=2.5,
            prefix=24,
            arp_count=3,
            arp_interval_ms=100,
        ),
        storage=(
            StorageConfig(
                device=Path("/dev/disk/by-uuid/0b6e"),
                mount=Path("/var/spool/cyrus"),
                fstype="ext4",
                options=("noatime", "nodiratime"),
                fsck=True,
                shared=False,
            ),
            StorageConfig(
                device=Path("/dev/disk/by-uuid/1c7f"),
                mount=Path("/var/spool/cyrus/meta"),
                fstype="xfs",
                fsck=False,
            ),
            StorageConfig(
                device=Path("/dev/mapper/shared"),
                mount=Path("/srv/shared"),
                fstype="gfs2",
                fsck=False,
                shared=True,
            ),
        ),
        services=ServicesConfig(
            start=("bmctl start",),
            stop=("bmctl stop", "sync"),
            check=("bmctl status",),
            timeout_s=120.0,
        ),
    )


def test_ha_objects_are_frozen() -> None:
    ha = parse(FULL, SOURCE).ha
    assert ha.vip is not None and ha.services is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        ha.vip.prefix = 8  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ha.storage[0].fsck = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ha.services.timeout_s = 1  # type: ignore[misc]


def test_no_ha_section_defaults() -> None:
    ha = parse("node: bm1\n", SOURCE).ha
    assert ha == HaConfig(vip=None, storage=(), services=None)
    assert parse("node: bm1\nha:\n  storage:\n", SOURCE).ha.storage == ()
    assert parse("node: bm1\nha:\n  storage: []\n", SOURCE).ha.storage == ()


def test_vip_defaults() -> None:
    conf = parse("node: bm1\nha:\n  vip:\n    address: 10.0.0.10\n    interface: eth0\n", SOURCE)
    assert conf.ha.vip == VipConfig(
        address="10.0.0.10",
        interface="eth0",
        check_interval_s=5.0,
        prefix=32,
        arp_count=5,
        arp_interval_ms=200,
    )


def test_storage_entry_defaults() -> None:
    conf = parse(with_storage(entry("/var/spool/cyrus")), SOURCE)
    assert conf.ha.storage == (
        StorageConfig(
            device=Path("/dev/sdb1"),
            mount=Path("/var/spool/cyrus"),
            fstype="ext4",
            options=(),
            fsck=True,
            shared=False,
        ),
    )


def test_services_defaults() -> None:
    text = "node: bm1\nha:\n  services:\n    start: [a]\n    stop: [b]\n"
    assert parse(text, SOURCE).ha.services == ServicesConfig(
        start=("a",), stop=("b",), check=(), timeout_s=300.0
    )


@pytest.mark.parametrize(
    ("fstype", "checked"),
    [
        ("ext2", True),
        ("ext3", True),
        ("ext4", True),
        ("xfs", True),
        ("btrfs", False),
        ("vfat", False),
        ("gfs2", False),
        ("ocfs2", False),
        ("nfs4", False),
    ],
)
def test_fsck_default_depends_on_the_fstype(fstype: str, checked: bool) -> None:
    assert fsck_by_default(fstype) is checked
    conf = parse(with_storage(entry("/srv/data", fstype)), SOURCE)
    assert conf.ha.storage[0].fsck is checked
    assert StorageConfig(Path("/dev/x"), Path("/srv"), fstype).fsck is checked


@pytest.mark.parametrize(("fstype", "given"), [("ext4", "false"), ("btrfs", "true")])
def test_fsck_given_wins_over_the_default(fstype: str, given: str) -> None:
    conf = parse(with_storage(entry("/srv/data", fstype, fsck=given)), SOURCE)
    assert conf.ha.storage[0].fsck is (given == "true")


@pytest.mark.parametrize("fstype", sorted(CLUSTER_FSTYPES))
def test_shared_cluster_filesystem(fstype: str) -> None:
    conf = parse(with_storage(entry("/var/spool/cyrus", fstype, shared="true")), SOURCE)
    assert conf.ha.storage[0].shared is True


def test_network_filesystem_outside_cyrus_is_accepted() -> None:
    text = with_storage(entry("/srv/backup", "nfs4", device="/net/backup"))
    assert parse(text, SOURCE).ha.storage[0].fstype == "nfs4"
    # a sibling whose name only starts like cyrus's is not under it
    text = with_storage(entry("/var/spool/cyrus2", "nfs"))
    assert parse(text, SOURCE).ha.storage[0].mount == Path("/var/spool/cyrus2")


def test_nested_mounts_in_the_right_order() -> None:
    text = with_storage(entry("/var/lib/cyrus") + entry("/var/lib/cyrus/db", device="/dev/sdc1"))
    mounts = [s.mount for s in parse(text, SOURCE).ha.storage]
    assert mounts == [Path("/var/lib/cyrus"), Path("/var/lib/cyrus/db")]


def test_siblings_in_any_order() -> None:
    text = with_storage(entry("/srv/b") + entry("/srv/a") + entry("/srv/ab"))
    assert len(parse(text, SOURCE).ha.storage) == 3


def test_mount_point_is_normalised() -> None:
    text = with_storage(entry("/var/spool/cyrus/"))
    assert parse(text, SOURCE).ha.storage[0].mount == Path("/var/spool/cyrus")


# --- the VIP --------------------------------------------------------------------


VIP = "node: bm1\nha:\n  vip:\n    address: 10.0.0.10\n    interface: eth0\n"


@pytest.mark.parametrize("address", ["vip.example.org", "10.0.0", "''", "fe80::1", "'10'"])
def test_vip_that_is_not_an_address(address: str) -> None:
    text = f"node: bm1\nha:\n  vip:\n    interface: eth0\n    address: {address}\n"
    assert_error(text, 5, "ha.vip.address", "is not an IPv4 address")


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("prefix", "0", "out of range"),
        ("prefix", "33", "out of range"),
        ("prefix", "-1", "out of range"),
        ("prefix", "24.5", "expected an integer"),
        ("prefix", "'/24'", "expected an integer"),
        ("prefix", "true", "expected an integer"),
        ("arp_count", "0", "out of range"),
        ("arp_count", "101", "out of range"),
        ("arp_interval_ms", "9", "out of range"),
        ("arp_interval_ms", "10001", "out of range"),
    ],
)
def test_vip_values_out_of_range(key: str, value: str, why: str) -> None:
    assert_error(VIP + f"    {key}: {value}\n", 6, f"ha.vip.{key}", why)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("prefix", "1"),
        ("prefix", "32"),
        ("arp_count", "1"),
        ("arp_count", "100"),
        ("arp_interval_ms", "10"),
        ("arp_interval_ms", "10000"),
    ],
)
def test_vip_range_bounds_are_accepted(key: str, value: str) -> None:
    vip = parse(VIP + f"    {key}: {value}\n", SOURCE).ha.vip
    assert getattr(vip, key) == int(value)


def test_vip_unknown_key() -> None:
    assert_error(VIP + "    arp_cont: 3\n", 6, "ha.vip.arp_cont", "did you mean 'arp_count'?")


# --- storage: cyrus is never on a network filesystem ----------------------------


@pytest.mark.parametrize(
    "fstype", ["nfs", "nfs4", "cifs", "smb3", "sshfs", "fuse", "fuse.sshfs", "fuse.glusterfs"]
)
@pytest.mark.parametrize(
    "mount", ["/var/spool/cyrus", "/var/spool/cyrus/data", "/var/lib/cyrus", "/var/lib/cyrus/db/"]
)
def test_cyrus_on_a_network_filesystem_is_refused(fstype: str, mount: str) -> None:
    text = with_storage(entry("/srv/other") + entry(mount, fstype, device="/net/mail"))
    message = assert_error(text, 9, "ha.storage[1].fstype", fstype, "block storage", "never NFS")
    assert "cyrus" in message


@pytest.mark.parametrize("mount", ["/var/spool", "/var/lib", "/var"])
def test_a_network_filesystem_above_cyrus_is_refused_too(mount: str) -> None:
    text = with_storage(entry(mount, "nfs4", device="/net/mail"))
    assert_error(text, 6, "ha.storage[0].fstype", f"nfs4 for {mount}: cyrus's data", "never NFS")


def test_cyrus_refusal_in_a_file_with_everything_else() -> None:
    text = FULL.replace("fstype: xfs", "fstype: nfs4")
    assert_error(text, 17, "ha.storage[1].fstype", "nfs4 for /var/spool/cyrus/meta")


@given(
    fstype=st.one_of(
        st.sampled_from(sorted(NETWORK_FSTYPES)),
        st.from_regex(r"fuse\.[a-z0-9][a-z0-9._+-]{0,20}", fullmatch=True),
    ),
    top=st.sampled_from(["/var/spool/cyrus", "/var/lib/cyrus"]),
    below=st.lists(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True), max_size=3),
)
def test_any_network_fstype_under_cyrus_is_refused(fstype: str, top: str, below: list[str]) -> None:
    mount = "/".join([top, *below])  # no part is '.' or '..': none starts with '.'
    assert is_network_fstype(fstype)
    assert cyrus_path_of(PurePosixPath(mount)) == PurePosixPath(top)
    text = with_storage(entry(mount, fstype))
    assert_error(text, 6, "ha.storage[0].fstype", "never NFS")


# --- storage: shared, duplicates, order -----------------------------------------


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs", "nfs4"])
def test_shared_on_a_non_cluster_filesystem_is_refused(fstype: str) -> None:
    text = with_storage(entry("/srv/data", fstype, options="[noatime]", shared="true"))
    assert_error(text, 8, "ha.storage[0].shared", "cluster filesystem (gfs2, ocfs2)", fstype)


def test_shared_false_is_fine_anywhere() -> None:
    assert not parse(with_storage(entry("/srv/d", shared="false")), SOURCE).ha.storage[0].shared


@pytest.mark.parametrize("again", ["/var/spool/cyrus", "/var/spool/cyrus/", "/var/spool//cyrus"])
def test_two_entries_on_one_mount_point(again: str) -> None:
    text = with_storage(
        entry("/var/spool/cyrus") + entry("/srv/x") + entry(again, device="/dev/sdc1")
    )
    assert_error(
        text,
        11,
        "ha.storage[2].mount",
        "/var/spool/cyrus is already the mount point of ha.storage[0], line 5",
    )


def test_child_listed_before_its_parent() -> None:
    text = with_storage(entry("/var/spool/cyrus/meta") + entry("/var/spool/cyrus"))
    message = assert_error(
        text,
        8,
        "ha.storage[1].mount",
        "/var/spool/cyrus/meta (ha.storage[0], line 5) is under /var/spool/cyrus",
        "would hide it",
        "list /var/spool/cyrus first",
    )
    assert "listed before it" in message


def test_grandchild_listed_before_its_grandparent() -> None:
    text = with_storage(entry("/srv") + entry("/var/lib/cyrus/db/x") + entry("/var/lib"))
    assert_error(text, 11, "ha.storage[2].mount", "would hide it")


# --- storage: shapes and values --------------------------------------------------


@pytest.mark.parametrize(
    ("storage", "line", "key", "why"),
    [
        ("  storage: /dev/sdb1\n", 3, "ha.storage", "expected a list, got a value"),
        ("  storage:\n    device: /dev/sdb1\n", 4, "ha.storage", "expected a list, got a mapping"),
        ("  storage:\n    - /dev/sdb1\n", 4, "ha.storage[0]", "expected a mapping, got a value"),
        ("  storage:\n    - - a\n", 4, "ha.storage[0]", "expected a mapping, got a list"),
    ],
)
def test_storage_that_is_not_a_list_of_mappings(
    storage: str, line: int, key: str, why: str
) -> None:
    assert_error("node: bm1\nha:\n" + storage, line, key, why)


def test_second_item_not_a_mapping() -> None:
    text = with_storage(entry("/srv/a") + "    - /srv/b\n")
    assert_error(text, 7, "ha.storage[1]", "expected a mapping, got a value")


@pytest.mark.parametrize(
    ("item", "line", "key", "why"),
    [
        (entry("/srv/a", fstyp="ext4"), 7, "ha.storage[0].fstyp", "did you mean 'fstype'?"),
        (entry("/srv/a", size="1G"), 7, "ha.storage[0].size", "unknown key; known keys: device"),
        ("    - mount: /srv/a\n      fstype: ext4\n", 4, "ha.storage[0].device", "missing"),
        ("    - device: /dev/a\n      fstype: ext4\n", 4, "ha.storage[0].mount", "missing"),
        ("    - device: /dev/a\n      mount: /srv/a\n", 4, "ha.storage[0].fstype", "missing"),
        (entry("/srv/a", device="sdb1"), 4, "ha.storage[0].device", "relative path"),
        (entry("srv/a"), 5, "ha.storage[0].mount", "relative path"),
        (entry("/srv/../etc"), 5, "ha.storage[0].mount", "'.' or '..'"),
        (entry("/srv/./a"), 5, "ha.storage[0].mount", "'.' or '..'"),
        (entry("/"), 5, "ha.storage[0].mount", "root filesystem"),
        (entry("/srv/a", "NFS"), 6, "ha.storage[0].fstype", "not a filesystem type"),
        (entry("/srv/a", "'ext4 '"), 6, "ha.storage[0].fstype", "not a filesystem type"),
        (entry("/srv/a", "''"), 6, "ha.storage[0].fstype", "not a filesystem type"),
        (entry("/srv/a", options="noatime"), 7, "ha.storage[0].options", "expected a list"),
        (
            entry("/srv/a", options="['noatime,ro']"),
            7,
            "ha.storage[0].options[0]",
            "one option per item",
        ),
        (entry("/srv/a", options="['']"), 7, "ha.storage[0].options[0]", "must not be empty"),
        (entry("/srv/a", fsck="'yes'"), 7, "ha.storage[0].fsck", "expected true or false"),
        (entry("/srv/a", shared="1"), 7, "ha.storage[0].shared", "expected true or false"),
    ],
)
def test_bad_storage_entry(item: str, line: int, key: str, why: str) -> None:
    assert_error(with_storage(item), line, key, why)


def test_a_duplicated_key_in_an_entry() -> None:
    text = with_storage(entry("/srv/a") + "      mount: /srv/b\n")
    assert_error(text, 7, "ha.storage[0].mount", "given twice")


# --- services -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("services", "line", "key", "why"),
    [
        ("    stop: [b]\n", 4, "ha.services.start", "missing; this key is required"),
        ("    start: [a]\n", 4, "ha.services.stop", "missing; this key is required"),
        ("    start: []\n    stop: [b]\n", 4, "ha.services.start", "at least one command"),
        ("    start: [a]\n    stop: b\n", 5, "ha.services.stop", "expected a list"),
        ("    start: [a]\n    stop: ['']\n", 5, "ha.services.stop[0]", "must not be empty"),
        ("    start: [a]\n    stop: [b]\n    check: [1]\n", 6, "ha.services.check[0]", "string"),
        ("    start: [a]\n    stop: [b]\n    timeout_s: 0\n", 6, "ha.services.timeout_s", "range"),
        ("    start: [a]\n    stop: [b]\n    restart: [c]\n", 6, "ha.services.restart", "unknown"),
    ],
)
def test_bad_services(services: str, line: int, key: str, why: str) -> None:
    assert_error("node: bm1\nha:\n  services:\n" + services, line, key, why)


def test_services_not_a_mapping() -> None:
    assert_error("node: bm1\nha:\n  services: [a]\n", 3, "ha.services", "expected a mapping")


def test_ha_unknown_key_lists_the_known_ones() -> None:
    assert_error("node: bm1\nha:\n  zzz: 1\n", 3, "ha.zzz", "known keys: vip, storage, services")


# --- the policy itself -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fstype", "network"),
    [
        ("nfs", True),
        ("nfs4", True),
        ("cifs", True),
        ("smb3", True),
        ("sshfs", True),
        ("fuse", True),
        ("fuse.sshfs", True),
        ("ext4", False),
        ("fuseblk", False),
        ("gfs2", False),
    ],
)
def test_network_fstypes(fstype: str, network: bool) -> None:
    assert is_network_fstype(fstype) is network


@pytest.mark.parametrize(
    ("mount", "cyrus"),
    [
        ("/var/spool/cyrus", "/var/spool/cyrus"),
        ("/var/spool/cyrus/mail", "/var/spool/cyrus"),
        ("/var/lib/cyrus", "/var/lib/cyrus"),
        ("/var/spool/cyrus2", None),
        ("/var/spool", "/var/spool/cyrus"),  # it would hold cyrus's spool
        ("/var", "/var/spool/cyrus"),
        ("/srv", None),
        ("/var/lib/cyrusdb", None),
    ],
)
def test_cyrus_path_of(mount: str, cyrus: str | None) -> None:
    found = cyrus_path_of(PurePosixPath(mount))
    assert found == (None if cyrus is None else PurePosixPath(cyrus))


# --- the README ------------------------------------------------------------------


def test_the_readme_example_is_valid_and_shows_the_defaults() -> None:
    """The Configuration block of the README parses (as the agent reads it:
    its peer key files do not exist here), and the ha values it shows are
    the model's defaults."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("## Configuration", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    ha = parse(block, SOURCE, receiver=True).ha
    assert ha.vip == VipConfig(address="10.0.0.10", interface="eth0")
    (storage,) = ha.storage
    assert storage == StorageConfig(
        device=Path("/dev/disk/by-uuid/..."),
        mount=Path("/var/spool/cyrus"),
        fstype="ext4",
        options=("noatime",),
    )
    assert storage.fsck is True and storage.shared is False
    assert ha.services == ServicesConfig(
        start=("bmctl start",), stop=("bmctl stop",), check=("bmctl status",)
    )
