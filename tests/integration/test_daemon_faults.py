"""Faults on the passive node and on the link while the daemon runs: what
failed is retried until it lands, what was not acknowledged stays counted,
and the state says what is true."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

from bmsync.fs.scan import TMP_PREFIX
from tests.integration.conftest import Pair
from tests.integration.daemon_helpers import (
    RunningDaemon,
    converge,
    take_the_passive_away,
    wait_for,
)
from tests.loopfs import loop_ext4, needs_loop_devices
from tests.sshd import write_config


def fill(path: Path) -> None:
    """Write ``path`` until the filesystem is full."""
    chunk = b"\0" * (1 << 16)
    with open(path, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    os.sync()


@needs_loop_devices()
def test_a_path_the_start_up_reconcile_failed_lands_once_the_disk_has_room(pair: Pair) -> None:
    pair.configure(exclude=("/etc/filler",))  # the passive's own, never synced
    etc = pair.active / "etc"
    etc.mkdir()
    (etc / "big.bin").write_bytes(os.urandom(2 << 20))
    passive_etc = pair.passive / "etc"
    passive_etc.mkdir()
    with loop_ext4(pair.base / "passive-etc.img", passive_etc, size_kib=8192):
        fill(passive_etc / "filler")
        daemon = RunningDaemon(pair)
        try:
            status = daemon.wait_state("degraded", timeout_s=60)
            assert status["exit_code"] == 1
            assert "big.bin" in status["reason"] and "No space left" in status["reason"]
            assert status["queued"] >= 1 and status["lag_s"] > 0
            assert status["clears"]
            human = pair.bmsync("status")
            assert human.returncode == 1 and "degraded        1 path(s)" in human.stdout
            (passive_etc / "filler").unlink()  # the administrator makes room
            status = daemon.wait_state("syncing", timeout_s=90)
            assert (status["queued"], status["lag_s"], status["reason"]) == (0, 0.0, None)
            assert (passive_etc / "big.bin").read_bytes() == (etc / "big.bin").read_bytes()
        finally:
            assert daemon.stop() == 0


def test_a_change_in_flight_when_the_link_dies_stays_queued_and_ages(pair: Pair) -> None:
    etc = pair.active / "etc"
    etc.mkdir()
    (etc / "a.conf").write_text("a\n")
    daemon = RunningDaemon(pair)
    try:
        daemon.wait_state("syncing")
        converge(pair, timeout_s=10)
        with open(etc / "large.bin", "wb") as f:
            for _ in range(160):
                f.write(os.urandom(1 << 20))
        passive_etc = pair.passive / "etc"
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(os.fsdecode(TMP_PREFIX)) for p in passive_etc.iterdir()):
            assert time.monotonic() < deadline, "the batch never reached the passive"
            time.sleep(0.001)
        take_the_passive_away(pair)
        status = daemon.wait_state("disconnected", timeout_s=30)
        assert status["queued"] >= 1, status
        first_lag = status["lag_s"]
        assert first_lag > 0
        time.sleep(0.2)
        assert daemon.status()["lag_s"] > first_lag  # it ages
        pair.sshd.start()
        daemon.wait_state("syncing", timeout_s=60)
        converge(pair, timeout_s=60)
        assert daemon.status()["queued"] == 0
    finally:
        assert daemon.stop() == 0


def test_a_paused_daemon_stays_paused_across_a_lost_link(pair: Pair) -> None:
    etc = pair.active / "etc"
    etc.mkdir()
    (etc / "a.conf").write_text("a\n")
    daemon = RunningDaemon(pair)
    try:
        daemon.wait_state("syncing")
        assert pair.bmsync("pause", "--reason", "maintenance window").returncode == 0
        before = daemon.status()
        take_the_passive_away(pair)
        time.sleep(0.5)
        pair.sshd.start()
        deadline = time.monotonic() + 60
        while (status := daemon.status())["last_contact"] == before["last_contact"]:
            assert time.monotonic() < deadline, "the daemon did not reconnect"
            time.sleep(0.05)
        assert (status["state"], status["exit_code"]) == ("paused", 1)
        assert status["paused_reason"] == "maintenance window"
    finally:
        assert daemon.stop() == 0


def test_an_edit_through_one_name_of_a_hard_linked_file_reaches_every_name(pair: Pair) -> None:
    """inotify reports the name the file was written through only; the
    passive node holds each name as a file of its own, and every one of them
    must follow (rsync -H aside, no name may stay behind unnoticed)."""
    etc = pair.active / "etc"
    etc.mkdir()
    (etc / "aliases").write_text("root: admin\n")
    os.link(etc / "aliases", etc / "aliases.bak")
    (etc / "sub").mkdir()
    os.link(etc / "aliases", etc / "sub" / "aliases")
    daemon = RunningDaemon(pair)
    try:
        daemon.wait_state("syncing")
        converge(pair, timeout_s=10)
        with open(etc / "aliases", "r+") as f:  # in place, through one name
            f.write("root: ops!\n")
        converge(pair, timeout_s=30)
        for name in ("aliases", "aliases.bak", "sub/aliases"):
            assert (pair.passive / "etc" / name).read_text() == "root: ops!\n\n", name
        assert daemon.status()["state"] == "syncing"
    finally:
        assert daemon.stop() == 0


def test_a_peer_tree_past_max_entries_is_reported_until_it_shrinks(pair: Pair) -> None:
    """A passive filled past sync.max_entries (a leaked key creating files,
    say) costs no memory: status says why nothing is synced, and sync
    resumes once the extra files are gone."""
    (pair.active / "etc").mkdir()
    (pair.active / "etc/a.conf").write_text("a\n")
    junk = pair.passive / "junk"
    junk.mkdir()
    for n in range(40):
        (junk / f"{n:02}").write_text("x")
    write_config(
        pair.passive_conf,
        "bm2",
        pair.passive,
        pair.base / "state2",
        extra_sync=("max_entries: 20",),
    )
    daemon = RunningDaemon(pair)
    try:
        seen: list[dict[str, Any]] = []

        def refused() -> bool:
            # one reading: between two, the daemon may be connecting again
            status = daemon.status()
            seen[:] = [status]
            return status["state"] == "disconnected" and bool(status["errors"])

        wait_for(refused, 60, "disconnected with an error in status")
        (status,) = seen
        assert status["exit_code"] == 1
        assert "holds more than 20 entries" in status["errors"][-1]["message"]
        assert "raise sync.max_entries" in status["errors"][-1]["message"]
        assert not (pair.passive / "etc").exists()
        for child in junk.iterdir():
            child.unlink()
        wait_for(lambda: (pair.passive / "etc/a.conf").exists(), 60, "a.conf on the passive")
        assert daemon.wait_state("syncing")["exit_code"] == 0
    finally:
        assert daemon.stop() == 0
