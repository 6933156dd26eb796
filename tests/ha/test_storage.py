"""`bmsync ha storage mount|unmount` on real loop devices (ext4 and xfs),
with a real peer: its agent behind a private sshd on 127.0.0.1, in a mount
namespace of its own, so the two nodes share the block devices but each
has its own mount table, as two machines on one SAN do."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from bmsync.core.errors import HaRefused
from bmsync.core.mounts import visible_at
from bmsync.fs.mounts import read_mounts
from tests.loopfs import loop_device, needs_storage_tools
from tests.sshd import Sshd, write_config

pytestmark = needs_storage_tools()


@dataclass
class Site:
    """This node (bm1) and its peer (bm2: an agent in its own mount
    namespace); two shared devices, ext4 mounted on ``spool`` and xfs on
    ``data`` under it."""

    base: Path
    conf: Path
    sshd: Sshd
    ext4: str
    xfs: str

    @property
    def spool(self) -> Path:
        return self.base / "srv" / "spool"

    @property
    def data(self) -> Path:
        return self.spool / "data"

    def bmsync(self, *args: str, conf: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "bmsync",
                "-c",
                str(conf or self.conf),
                "--log-level",
                "info",
                *list(args),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=self.base,
        )

    def configure(self, *entries: str, peer: bool = True) -> Path:
        """This node's config with ``entries`` (YAML of ha.storage items);
        by default, the two shared devices."""
        if not entries:
            entries = (
                storage_entry(self.ext4, self.spool, "ext4"),
                storage_entry(self.xfs, self.data, "xfs"),
            )
        lines = ("ha:", "  storage:", *entries)
        return write_config(
            self.conf,
            "bm1",
            self.base / "bm1-root",
            self.base / "state1",
            self.sshd if peer else None,
            extra_top=lines,
        )

    def mounted_here(self, where: Path) -> str | None:
        """The source of what is mounted on ``where`` in this namespace."""
        seen = visible_at(read_mounts(), PurePosixPath(where))
        return None if seen is None else seen.source

    def peer_mount(self, device: str, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        done = self.sshd.in_mount_namespace("mount", device, str(where))
        assert done.returncode == 0, done.stderr

    def peer_unmount(self, where: Path) -> None:
        done = self.sshd.in_mount_namespace("umount", str(where))
        assert done.returncode == 0, done.stderr


def storage_entry(device: str, mount: Path, fstype: str, *extra: str) -> str:
    lines = [f"    - device: {device}", f"      mount: {mount}", f"      fstype: {fstype}"]
    return "\n".join(lines + [f"      {line}" for line in extra])


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with contextlib.ExitStack() as stack:
        ext4 = stack.enter_context(loop_device(tmp_path / "ext4.img", "ext4"))
        xfs = stack.enter_context(loop_device(tmp_path / "xfs.img", "xfs"))
        sshd = Sshd.create(tmp_path / "sshd", own_mounts=True)
        peer_conf = write_config(tmp_path / "bm2.yaml", "bm2", tmp_path, tmp_path / "state2")
        sshd.authorize(peer_conf)
        (tmp_path / "bm1-root").mkdir()
        site = Site(tmp_path, tmp_path / "bm1.yaml", sshd, ext4, xfs)
        site.configure()
        # before any mount here: the peer's namespace starts with none of them
        sshd.start()
        stack.callback(sshd.stop)
        yield site


def test_mount_checks_and_mounts_in_order_and_unmount_undoes_it(site: Site) -> None:
    done = site.bmsync("ha", "storage", "mount")
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith(f"{site.spool}: mounted {site.ext4} (ext4), checked by e2fsck")
    assert second.startswith(f"{site.data}: mounted {site.xfs} (xfs), checked by xfs_repair")
    assert site.mounted_here(site.spool) == site.ext4
    assert site.mounted_here(site.data) == site.xfs
    assert "peer_mounts" in done.stderr and "peer=bm2" in done.stderr  # the peer was asked
    (site.data / "mail").write_text("kept")

    again = site.bmsync("ha", "storage", "mount")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"{site.spool}: {site.ext4} already mounted; nothing to do",
        f"{site.data}: {site.xfs} already mounted; nothing to do",
    ]

    down = site.bmsync("ha", "storage", "unmount")
    assert down.returncode == 0, down.stderr
    assert down.stdout.splitlines() == [f"{site.data}: unmounted", f"{site.spool}: unmounted"]
    assert site.mounted_here(site.spool) is None and site.mounted_here(site.data) is None

    down = site.bmsync("ha", "storage", "unmount")
    assert down.returncode == 0, down.stderr
    assert "not mounted; nothing to do" in down.stdout

    assert site.bmsync("ha", "storage", "mount").returncode == 0
    assert (site.data / "mail").read_text() == "kept"


def test_a_device_the_peer_has_mounted_is_refused(site: Site) -> None:
    on_peer = site.base / "peer-data"
    site.peer_mount(site.xfs, on_peer)
    for extra in ((), ("--peer-is-down",)):
        done = site.bmsync("ha", "storage", "mount", *extra)
        assert done.returncode == HaRefused.exit_code, done.stdout + done.stderr
        assert "nothing mounted" in done.stderr
        assert f"{site.xfs} is mounted on the peer bm2 ({on_peer})" in done.stderr
        assert "'bmsync ha storage unmount' on bm2" in done.stderr
        assert "--peer-is-down does not apply" in done.stderr
        # the ext4 entry, which the peer does not hold, is not mounted either
        assert site.mounted_here(site.spool) is None

    site.peer_unmount(on_peer)
    done = site.bmsync("ha", "storage", "mount")
    assert done.returncode == 0, done.stderr
    assert site.mounted_here(site.data) == site.xfs


def test_a_peer_that_cannot_be_asked_needs_peer_is_down(site: Site) -> None:
    site.sshd.stop()
    done = site.bmsync("ha", "storage", "mount")
    assert done.returncode == HaRefused.exit_code, done.stdout + done.stderr
    assert "cannot ask the peer whether it has it mounted" in done.stderr
    assert "then add --peer-is-down" in done.stderr
    assert site.mounted_here(site.spool) is None

    done = site.bmsync("ha", "storage", "mount", "--peer-is-down")
    assert done.returncode == 0, done.stderr
    assert "peer_assumed_down" in done.stderr  # logged, with why
    assert site.mounted_here(site.spool) == site.ext4
    assert site.mounted_here(site.data) == site.xfs


def test_without_a_peer_section_mounting_needs_peer_is_down(site: Site) -> None:
    site.configure(peer=False)
    done = site.bmsync("ha", "storage", "mount")
    assert done.returncode == HaRefused.exit_code
    assert "has no 'peer:' section" in done.stderr and "--peer-is-down" in done.stderr
    assert site.bmsync("ha", "storage", "mount", "--peer-is-down").returncode == 0


def _holder(cwd: Path, code: str) -> subprocess.Popen[str]:
    """A process using the filesystem at ``cwd``; returns once it is ready."""
    process = subprocess.Popen(
        [sys.executable, "-c", code + "\nprint('ready', flush=True)\ntime.sleep(600)"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def test_unmount_stops_the_processes_holding_the_mount(site: Site) -> None:
    site.configure(
        storage_entry(site.ext4, site.spool, "ext4", "kill_grace_s: 1"),
        storage_entry(site.xfs, site.data, "xfs", "kill_grace_s: 1"),
    )
    assert site.bmsync("ha", "storage", "mount").returncode == 0
    (site.data / "mailbox").write_text("x")
    reader = _holder(site.data, "import time; f = open('mailbox')")
    stubborn = _holder(
        site.spool, "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    )
    try:
        done = site.bmsync("ha", "storage", "unmount")
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert f"holder {reader.pid} ({sys.executable} -c import time" in out
        assert f"on {site.data}: SIGTERM" in out
        assert f"holder {stubborn.pid} (" in out
        assert f"still on {site.spool} after 1 s: SIGKILL" in out
        assert f"{site.data}: unmounted (1 holder(s) stopped)" in out
        assert f"{site.spool}: unmounted (1 holder(s) stopped)" in out
        assert reader.wait(10) == -signal.SIGTERM
        assert stubborn.wait(10) == -signal.SIGKILL
        assert site.mounted_here(site.spool) is None
    finally:
        for process in (reader, stubborn):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_mount_the_kernel_keeps_busy_is_an_error_naming_where_to_look(site: Site) -> None:
    assert site.bmsync("ha", "storage", "mount").returncode == 0
    image = site.spool / "inner.img"
    image.write_bytes(b"\0" * 1024 * 1024)
    inner = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        done = site.bmsync("ha", "storage", "unmount")
        assert done.returncode == HaRefused.exit_code, done.stdout + done.stderr
        assert f"{site.data}: unmounted" in done.stdout  # the one under it went first
        assert f"{site.spool} is busy but no process holds it" in done.stderr
        assert "'losetup -a'" in done.stderr
        assert site.mounted_here(site.spool) == site.ext4  # never a lazy unmount
    finally:
        subprocess.run(["losetup", "-d", inner], check=True)
    done = site.bmsync("ha", "storage", "unmount")
    assert done.returncode == 0, done.stderr
    assert site.mounted_here(site.spool) is None


@pytest.mark.parametrize(
    ("fsck", "failed"),
    [("true", "'e2fsck -p"), ("false", "'mount -t ext4")],
    ids=["fsck-fails", "mount-fails"],
)
def test_a_failed_mount_unmounts_what_the_run_mounted(site: Site, fsck: str, failed: str) -> None:
    # the xfs device, said to be ext4: its check or its mount fails
    site.configure(
        storage_entry(site.ext4, site.spool, "ext4"),
        storage_entry(site.xfs, site.data, "ext4", f"fsck: {fsck}"),
    )
    done = site.bmsync("ha", "storage", "mount")
    assert done.returncode == HaRefused.exit_code, done.stdout + done.stderr
    assert f"{site.data}: {failed}" in done.stderr
    assert f"unmounted again what this run mounted: {site.spool}" in done.stderr
    assert site.mounted_here(site.spool) is None and site.mounted_here(site.data) is None


def test_a_symlinked_mount_point_is_refused(site: Site) -> None:
    real = site.base / "real"
    real.mkdir()
    (site.base / "srv").mkdir()
    site.spool.symlink_to(real)
    site.configure(storage_entry(site.ext4, site.spool, "ext4"))
    done = site.bmsync("ha", "storage", "mount")
    assert done.returncode == HaRefused.exit_code
    assert f"{site.spool} resolves to {real}" in done.stderr
    assert site.mounted_here(real) is None


def test_dry_run_prints_the_commands_and_changes_nothing(site: Site) -> None:
    done = site.bmsync("ha", "storage", "mount", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"# first, the peer {site.sshd.address} is asked over SSH which devices it has mounted",
        f"mkdir -p {site.spool}",
        f"e2fsck -p {site.ext4}",
        f"mount -t ext4 {site.ext4} {site.spool}",
        f"mkdir -p {site.data}",
        f"xfs_repair -n {site.xfs}",
        f"mount -t xfs {site.xfs} {site.data}",
    ]
    assert not site.spool.exists()

    assert site.bmsync("ha", "storage", "mount").returncode == 0
    done = site.bmsync("ha", "storage", "unmount", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stdout.splitlines() if not line.startswith("#")] == [
        f"umount {site.data}",
        f"umount {site.spool}",
    ]
    assert site.mounted_here(site.spool) == site.ext4


def status(site: Site) -> tuple[int, dict[str, Any]]:
    done = site.bmsync("ha", "status", "--json")
    return done.returncode, json.loads(done.stdout)


def test_status_shows_each_mount_and_flags_a_mount_point_holding_something_else(
    site: Site,
) -> None:
    code, report = status(site)
    assert code == 0, report
    assert [(s["mount"], s["mounted_here"]) for s in report["storage"]] == [
        (str(site.spool), False),
        (str(site.data), False),
    ]
    assert report["problems"] == []

    assert site.bmsync("ha", "storage", "mount").returncode == 0
    code, report = status(site)
    assert code == 0, report
    spool, data = report["storage"]
    assert (spool["mounted_here"], spool["fstype"], spool["network"]) == (True, "ext4", False)
    assert (data["mounted_here"], data["fstype"]) == (True, "xfs")
    assert {p["path"] for p in report["cyrus"]} == {"/var/spool/cyrus", "/var/lib/cyrus"}

    assert site.bmsync("ha", "storage", "unmount").returncode == 0
    site.spool.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "stray", str(site.spool)], check=True)
    try:
        code, report = status(site)
        assert code == HaRefused.exit_code
        assert report["storage"][0]["holds"] == "stray"
        assert any("holds stray, not" in problem for problem in report["problems"])
        text = site.bmsync("ha", "status")
        assert f"storage {site.spool} ({site.ext4}): holds stray (tmpfs)" in text.stdout
        assert "problem: " in text.stdout
        # and mount refuses to hide it
        done = site.bmsync("ha", "storage", "mount")
        assert done.returncode == HaRefused.exit_code
        assert f"{site.spool} already holds stray (tmpfs)" in done.stderr
    finally:
        subprocess.run(["umount", str(site.spool)], check=True)


def test_the_cyrus_nfs_configuration_is_refused_with_its_line(site: Site) -> None:
    conf = site.configure(
        storage_entry(site.ext4, site.spool, "ext4"),
        storage_entry("/net/mail", Path("/var/spool/cyrus"), "nfs4"),
    )
    done = site.bmsync("ha", "storage", "mount")
    assert done.returncode == 2
    line = conf.read_text().splitlines().index("      fstype: nfs4") + 1
    assert f"{conf} line {line}: ha.storage[1].fstype" in done.stderr
    assert "needs block storage" in done.stderr
    assert site.mounted_here(site.spool) is None
