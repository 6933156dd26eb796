"""`bmsync run` end to end: real inotify, a real sshd on 127.0.0.1, the
daemon as a separate process driven through its control socket and signals."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bmsync.fs.scan import scan_tree
from bmsync.state.journal import ManifestStore
from tests.helpers import VersionReader, whole_root
from tests.integration.conftest import Pair
from tests.integration.daemon_helpers import (
    RunningDaemon,
    cmdline,
    converge,
    descendants,
    wait_for,
)
from tests.integration.trees import random_changes
from tests.sshd import copy_tree

SYNC_PAUSED = 9


@pytest.fixture
def etc_pair(pair: Pair) -> Pair:
    copy_tree(Path("/etc"), pair.active / "etc")
    return pair


@pytest.fixture
def daemon(etc_pair: Pair) -> Iterator[RunningDaemon]:
    running = RunningDaemon(etc_pair)
    try:
        running.wait_state("syncing")
        yield running
    finally:
        assert running.stop() == 0, running.log()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_300_random_operations_converge(daemon: RunningDaemon, seed: int) -> None:
    pair = daemon.pair
    converge(pair, timeout_s=10)  # the start-up reconcile
    actions = random_changes(pair.active / "etc", random.Random(seed), 300)
    assert len(set(actions)) >= 12
    try:
        # a behaviour, not a race with this machine's load: bench/latency.py times it
        took = converge(pair, timeout_s=30.0)
    except AssertionError:
        print(daemon.log())
        raise
    status = daemon.status()
    assert status["state"] == "syncing" and status["exit_code"] == 0
    assert status["errors"] == [], status["errors"]
    print(f"seed {seed}: converged {took * 1000:.0f} ms after the last operation")


def test_lsyncd_290_directory_replaced_by_a_symlink_to_elsewhere(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    pair = daemon.pair
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not ours\n")
    conf_d = pair.active / "etc" / "app.d"
    conf_d.mkdir()
    for i in range(5):
        (conf_d / f"{i}.conf").write_text(f"{i}\n")
    converge(pair)
    shutil.rmtree(conf_d)
    conf_d.symlink_to(elsewhere)
    converge(pair)
    assert os.readlink(pair.passive / "etc/app.d") == str(elsewhere)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]


def test_lsyncd_131_285_rename_chain_in_one_batch(daemon: RunningDaemon) -> None:
    etc = daemon.pair.active / "etc"
    for name in "abc":
        (etc / f"{name}.conf").write_text(f"I was {name}\n")
    converge(daemon.pair)
    (etc / "c.conf").rename(etc / "tmp.conf")
    (etc / "b.conf").rename(etc / "c.conf")
    (etc / "a.conf").rename(etc / "b.conf")
    (etc / "tmp.conf").rename(etc / "a.conf")
    converge(daemon.pair)
    assert (daemon.pair.passive / "etc/a.conf").read_text() == "I was c\n"


def test_lsyncd_630_create_then_delete_in_one_batch(daemon: RunningDaemon) -> None:
    etc = daemon.pair.active / "etc"
    for i in range(20):
        f = etc / f"ephemeral{i}.conf"
        f.write_text("here and gone\n")
        f.unlink()
    (etc / "marker.conf").write_text("done\n")
    converge(daemon.pair)
    assert not list((daemon.pair.passive / "etc").glob("ephemeral*"))


def test_lsyncd_256_file_still_being_written_is_never_sent_half_written(
    daemon: RunningDaemon,
) -> None:
    target = daemon.pair.active / "etc" / "slow.conf"
    passive = daemon.pair.passive / "etc" / "slow.conf"
    seen: set[bytes] = set()
    stop = threading.Event()

    def watch_passive() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.add(passive.read_bytes())
            time.sleep(0.001)

    watcher = threading.Thread(target=watch_passive)
    watcher.start()
    try:
        with target.open("wb") as f:
            for i in range(30):
                f.write(b"line %d of a slowly written file\n" % i)
                f.flush()
                time.sleep(0.04)  # 1.2 s of writing, past the 1 s max delay
        final = target.read_bytes()
        converge(daemon.pair)
    finally:
        stop.set()
        watcher.join()
    # every version the passive showed was the file as it stood at some
    # point, never a mix; the last one is the complete file
    assert all(final.startswith(v) for v in seen)
    assert passive.read_bytes() == final


def test_lsyncd_728_200_mb_written_slowly_in_place(daemon: RunningDaemon) -> None:
    target = daemon.pair.active / "etc" / "big.db"
    block = random.Random(728).randbytes(1024 * 1024)
    with target.open("wb") as f:
        for i in range(200):
            f.write(block[i:] + block[:i])
            if i % 20 == 0:
                time.sleep(0.1)
    converge(daemon.pair, timeout_s=60)
    assert (daemon.pair.passive / "etc/big.db").stat().st_size == 200 * 1024 * 1024


def test_restart_finds_what_changed_while_stopped(etc_pair: Pair) -> None:
    first = RunningDaemon(etc_pair)
    etc = etc_pair.active / "etc"
    batch = etc / "batch"
    try:
        first.wait_state("syncing")
        batch.mkdir()
        for i in range(50):
            (batch / f"{i}.conf").write_text(f"{i}\n")
        converge(etc_pair)
    finally:
        assert first.stop() == 0
    # what the daemon recorded as acknowledged is exactly what the passive holds
    recorded = ManifestStore(etc_pair.base / "state1").load("bm2")
    assert recorded == scan_tree(etc_pair.passive, whole_root()).entries
    for i in range(50):
        f = batch / f"{i}.conf"
        if i % 3 == 0:
            f.write_text(f"changed {i}\n")
        elif i % 3 == 1:
            f.unlink()
        else:
            f.rename(batch / f"renamed-{i}.conf")
    second = RunningDaemon(etc_pair)
    try:
        second.wait_state("syncing")
        converge(etc_pair, timeout_s=5)
    finally:
        assert second.stop() == 0


def _agent_pids(pair: Pair) -> list[int]:
    assert pair.sshd.process is not None
    return [
        pid
        for pid in descendants(pair.sshd.process.pid)
        if "-m bmsync" in cmdline(pid) and str(pair.passive_conf) in cmdline(pid)
    ]


def _session_pids(pair: Pair) -> list[int]:
    """sshd's per-connection processes (children of the listener we started)."""
    assert pair.sshd.process is not None
    children = Path(
        f"/proc/{pair.sshd.process.pid}/task/{pair.sshd.process.pid}/children"
    ).read_text()
    return [int(c) for c in children.split()]


@pytest.mark.parametrize("victim", ["agent", "ssh connection"])
def test_link_killed_mid_burst_converges_after_reconnect(
    daemon: RunningDaemon, victim: str
) -> None:
    pair = daemon.pair
    etc = pair.active / "etc" / "burst"
    etc.mkdir()
    for i in range(150):
        (etc / f"{i}.conf").write_text(f"{i}\n" * 100)
        if i == 50:
            pids = _agent_pids(pair) if victim == "agent" else _session_pids(pair)
            assert pids, "nothing to kill"
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
    # the loss was seen (not polled for: the daemon may be back before a
    # status call catches it disconnected), and nothing of the burst is lost
    wait_for(
        lambda: any("peer link" in e["message"] for e in daemon.status()["errors"]),
        timeout_s=30,
        what="the lost link reported",
    )
    daemon.wait_state("syncing", timeout_s=30)
    converge(pair, timeout_s=30)
    assert daemon.status()["queued"] == 0


def inotify_instances(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(FileNotFoundError):
            count += os.readlink(fd) == "anon_inode:inotify"
    return count


def test_inotify_overflow_runs_a_full_reconcile(daemon: RunningDaemon) -> None:
    limit = Path("/proc/sys/fs/inotify/max_queued_events")
    original = limit.read_text()
    burst = daemon.pair.active / "etc" / "overflow"
    limit.write_text("64\n")
    restarted: RunningDaemon | None = None
    try:
        # the limit applies to inotify instances created from now on
        assert daemon.stop() == 0
        start = daemon.log_path.stat().st_size  # the log is shared: the restarted one's part
        restarted = RunningDaemon(daemon.pair)
        restarted.wait_state("syncing")
        # watchdog creates the inotify instance in its own thread: wait for
        # it, so that the 64-event limit is in force for it
        wait_for(lambda: inotify_instances(restarted.pid) > 0, 60, "the daemon's inotify")
        limit.write_text(original)
        burst.mkdir()
        converge(daemon.pair)  # the new directory is synced, so it is watched
        # the daemon is frozen while the burst fills its 64-event queue
        restarted.process.send_signal(signal.SIGSTOP)
        try:
            for i in range(3000):
                (burst / f"{i}.conf").write_text(f"{i}\n")
        finally:
            restarted.process.send_signal(signal.SIGCONT)
        converge(daemon.pair, timeout_s=60)  # only a full reconcile finds the lost events
        restarted.wait_state("syncing")
        # bmsync says why, once for the one burst, and runs one full reconcile
        # for it (watchdog's own repair used to overflow the 64-event queue
        # again and again: dozens of reports and reconciles under load). The
        # whole log: watchdog logs overflows of its own.
        log = restarted.log_path.read_text(errors="replace")[start:]
        lines = log.splitlines()
        reports = [n for n, line in enumerate(lines) if "events_lost" in line]
        assert len(reports) == 1 and "inotify queue overflow" in lines[reports[0]], log[-5000:]
        assert sum("] reconciled" in line for line in lines[reports[0] :]) == 1, log[-5000:]
        # and it settles: the next edit goes out as a batch, no reconcile
        reconciles = log.count("] reconciled")
        (burst / "after.conf").write_text("after the overflow\n")
        converge(daemon.pair, timeout_s=30)
        restarted.wait_state("syncing")
        log = restarted.log_path.read_text(errors="replace")[start:]
        assert log.count("] reconciled") == reconciles, log[-5000:]
    finally:
        limit.write_text(original)
        if restarted is not None:
            assert restarted.stop() == 0


def test_reader_sees_only_complete_versions_during_500_replacements(
    daemon: RunningDaemon,
) -> None:
    pair = daemon.pair
    source = pair.active / "etc" / "big.conf"
    passive = pair.passive / "etc" / "big.conf"
    versions = [bytes([i % 251]) * (1024 * 1024) for i in range(500)]
    with VersionReader(passive, versions) as reader:
        for version in versions:
            tmp = source.with_name(".big.conf.new")
            tmp.write_bytes(version)
            tmp.rename(source)
            time.sleep(0.002)
        converge(pair, timeout_s=10)
    assert reader.torn == []
    assert len(set(reader.seen)) > 20
    assert passive.read_bytes() == versions[-1]


def test_delete_storm_pauses_and_discard_restores(daemon: RunningDaemon) -> None:
    pair = daemon.pair
    tree = pair.active / "etc" / "bm-config"
    for d in range(10):
        (tree / f"d{d}").mkdir(parents=True)
        for f in range(30):
            (tree / f"d{d}" / f"{f}.conf").write_text(f"{d}/{f}\n")
    converge(pair, timeout_s=5)

    shutil.rmtree(tree)
    status = daemon.wait_state("paused", timeout_s=30)
    assert status["exit_code"] == 1
    assert "delete storm" in status["paused_reason"]
    assert "bmsync resume --discard" in daemon.pair.bmsync("status").stdout
    resync = pair.bmsync("resync")  # through the paused daemon: held back, said so
    assert resync.returncode == SYNC_PAUSED, resync.stderr
    assert "bmsync resume" in resync.stderr
    time.sleep(0.5)  # nothing of it may reach the passive meanwhile
    assert len(list((pair.passive / "etc/bm-config").rglob("*.conf"))) == 300

    done = pair.bmsync("resume", "--discard")
    assert done.returncode == 0, done.stderr
    assert len(list(tree.rglob("*.conf"))) == 300
    daemon.wait_state("syncing")
    converge(pair, timeout_s=5)

    shutil.rmtree(tree)
    daemon.wait_state("paused", timeout_s=30)
    assert pair.bmsync("resume").returncode == 0
    converge(pair, timeout_s=5)
    assert not (pair.passive / "etc/bm-config").exists()


def test_a_resync_by_hand_goes_through_the_delete_storm_brake_too(etc_pair: Pair) -> None:
    """With no daemon running, `bmsync resync` deletes nothing past the brake
    unless told to, and says how."""
    pair = etc_pair
    tree = pair.active / "etc" / "bm-config"
    tree.mkdir()
    for f in range(200):
        (tree / f"{f}.conf").write_text(f"{f}\n")
    pair.resync_json()
    shutil.rmtree(tree)

    held = pair.bmsync("resync")
    assert held.returncode == SYNC_PAUSED, held.stdout + held.stderr
    assert "delete storm" in held.stderr and "--allow-deletes" in held.stderr
    assert len(list((pair.passive / "etc/bm-config").glob("*.conf"))) == 200

    done = pair.bmsync("resync", "--allow-deletes")
    assert done.returncode == 0, done.stderr
    assert not (pair.passive / "etc/bm-config").exists()


def test_status_in_each_state(etc_pair: Pair) -> None:
    stopped = etc_pair.bmsync("status")
    assert stopped.returncode == 3
    assert "stopped" in stopped.stdout

    running = RunningDaemon(etc_pair)
    try:
        status = running.wait_state("syncing")
        assert status["exit_code"] == 0
        assert status["node"] == "bm1" and status["peer"].startswith("root@127.0.0.1:")
        for key in ("lag_s", "queued", "last_sync", "errors"):
            assert key in status

        assert etc_pair.bmsync("pause", "--reason", "apt upgrade").returncode == 0
        status = running.status()
        assert (status["state"], status["exit_code"]) == ("paused", 1)
        assert status["paused_reason"] == "apt upgrade"
        (etc_pair.active / "etc" / "during-pause.conf").write_text("queued\n")
        time.sleep(0.3)
        assert not (etc_pair.passive / "etc/during-pause.conf").exists()
        assert running.status()["queued"] >= 1
        assert etc_pair.bmsync("resume").returncode == 0
        converge(etc_pair)

        # the peer goes away: its sshd (so reconnects fail) and the live session
        sessions = _session_pids(etc_pair)
        etc_pair.sshd.stop()
        for pid in sessions:
            os.kill(pid, signal.SIGKILL)
        (etc_pair.active / "etc" / "while-down.conf").write_text("later\n")
        status = running.wait_state("disconnected", timeout_s=20)
        assert status["exit_code"] == 1
        etc_pair.sshd.start()
        running.wait_state("syncing", timeout_s=30)
        converge(etc_pair, timeout_s=5)
    finally:
        assert running.stop() == 0
    assert etc_pair.bmsync("status").returncode == 3


def test_systemd_notify_ready_and_watchdog(etc_pair: Pair, tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(30)
    running = RunningDaemon(etc_pair, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
    try:
        messages: list[str] = []
        while not (
            {"READY=1", "WATCHDOG=1"} <= set(messages)
            and any(m.startswith("STATUS=syncing") for m in messages)
        ):
            messages.extend(sock.recv(4096).decode().split("\n"))
    finally:
        assert running.stop() == 0
        sock.close()


def test_systemd_hears_ready_while_the_peer_is_down(etc_pair: Pair, tmp_path: Path) -> None:
    """After a failover the peer is down: `systemctl start` must not wait for
    it. READY=1 means up and watching; the peer's state is in STATUS=."""
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(60)
    etc_pair.sshd.stop()
    running = RunningDaemon(etc_pair, env={"NOTIFY_SOCKET": address})
    try:
        messages: list[str] = []
        while "READY=1" not in messages:
            messages.extend(sock.recv(4096).decode().split("\n"))
        while not any(m.startswith("STATUS=disconnected") for m in messages):
            messages.extend(sock.recv(4096).decode().split("\n"))
        assert running.status()["state"] == "disconnected"
        (etc_pair.active / "etc" / "while-down.conf").write_text("kept for later\n")
        etc_pair.sshd.start()
        while not any(m.startswith("STATUS=syncing") for m in messages):
            messages.extend(sock.recv(4096).decode().split("\n"))
        converge(etc_pair, timeout_s=30)
    finally:
        assert running.stop() == 0
        sock.close()


def test_sighup_with_a_bad_config_keeps_the_old_one(daemon: RunningDaemon) -> None:
    pair = daemon.pair
    good = pair.active_conf.read_text()
    pair.active_conf.write_text(good + "bogus_key: 1\n")
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(
        lambda: "configuration not reloaded" in daemon.log(), timeout_s=5, what="reload refusal"
    )
    assert "bogus_key: unknown key" in daemon.log()
    (pair.active / "etc" / "after-hup.conf").write_text("still syncing\n")
    converge(pair)
    pair.active_conf.write_text(good)


def test_single_file_sync_paths_are_watched_through_their_directory(pair: Pair) -> None:
    pair.configure(paths=(), preset="bluemind")
    es = pair.active / "usr/share/bm-elasticsearch/config"
    es.mkdir(parents=True)
    (es / "elasticsearch.yml").write_text("cluster.name: bm\n")
    (es / "jvm.options").write_text("-Xmx1g\n")  # beside it, not a sync path
    (pair.active / "etc").mkdir()
    (pair.passive / "etc").mkdir()
    (pair.passive / "etc/hostname").write_text("bm2\n")
    running = RunningDaemon(pair)
    try:
        running.wait_state("syncing")
        passive_es = pair.passive / "usr/share/bm-elasticsearch/config"
        wait_for(lambda: (passive_es / "elasticsearch.yml").exists(), 5, "the first copy")
        (es / "elasticsearch.yml").write_text("cluster.name: bluemind\n")
        (es / "jvm.options").write_text("-Xmx2g\n")
        (pair.active / "etc/hostname").write_text("bm1\n")  # excluded by the preset
        wait_for(
            lambda: (passive_es / "elasticsearch.yml").read_text() == "cluster.name: bluemind\n",
            2,
            "the edit of elasticsearch.yml",
        )
        time.sleep(0.3)
        assert not (passive_es / "jvm.options").exists()
        assert (pair.passive / "etc/hostname").read_text() == "bm2\n"
    finally:
        assert running.stop() == 0


def test_resync_while_the_daemon_runs_goes_through_it(daemon: RunningDaemon) -> None:
    done = daemon.pair.bmsync("resync")
    assert done.returncode == 0, done.stderr
    assert "through the running daemon" in done.stdout and "peer in sync" in done.stdout


def test_one_line_in_a_20_mb_file_travels_as_a_small_delta(daemon: RunningDaemon) -> None:
    pair = daemon.pair
    rng = random.Random(20)
    lines = [b"setting.%d = %s" % (i, b"x" * rng.randrange(20, 100)) for i in range(300_000)]
    big = pair.active / "etc" / "big.txt"
    big.write_bytes(b"\n".join(lines) + b"\n")
    assert big.stat().st_size > 20_000_000
    converge(pair, timeout_s=30)

    # Replaced whole by rename, as sed -i, editors and dpkg do: an in-place
    # rewrite slower than the batch window would first send the truncated
    # file, and the next version could only go whole.
    lines[150_000] = b"setting.150000 = changed"
    staged = pair.active.parent / "big.txt.new"
    staged.write_bytes(b"\n".join(lines) + b"\n")
    os.replace(staged, big)
    converge(pair, timeout_s=10)
    last = daemon.status()["last_batch"]
    assert last["deltas"] == 1 and last["bytes"] <= 8 * 1024, last

    # the passive copy diverged behind our back: the delta is refused, the
    # whole file goes instead, and nothing is reported as an error
    (pair.passive / "etc/big.txt").write_bytes(b"edited on the passive\n")
    lines[7] = b"setting.7 = changed too"
    big.write_bytes(b"\n".join(lines) + b"\n")
    converge(pair, timeout_s=10)
    assert daemon.status()["errors"] == []
    assert "delta_base_stale" in daemon.log()


def test_restart_checks_the_acknowledged_manifest_against_the_passive(etc_pair: Pair) -> None:
    """On start the agent only confirms the acknowledged manifest by digest;
    an edit made on the passive while the daemon was stopped breaks that
    confirmation, and the full comparison puts the active's version back."""
    etc, passive_etc = etc_pair.active / "etc", etc_pair.passive / "etc"
    (etc / "app.conf").write_text("port 8080\n")
    first = RunningDaemon(etc_pair)
    try:
        first.wait_state("syncing")
        converge(etc_pair)
    finally:
        assert first.stop() == 0

    second = RunningDaemon(etc_pair)
    try:
        second.wait_state("syncing")
        assert "peer_manifest_confirmed" in second.log()
    finally:
        assert second.stop() == 0

    (passive_etc / "app.conf").write_text("port 9999\n")  # someone on the passive
    (passive_etc / "stray.conf").write_text("not on the active\n")
    third = RunningDaemon(etc_pair)
    try:
        third.wait_state("syncing")
        assert "peer_manifest_differs" in third.log()
        converge(etc_pair, timeout_s=5)
        assert (passive_etc / "app.conf").read_text() == "port 8080\n"
        assert not (passive_etc / "stray.conf").exists()
        # neither edit on the passive is lost: a copy of each is kept there
        kept = {Path(b["path"]).name: Path(b["kept"]) for b in third.status()["backups"]}
        assert kept.keys() == {"app.conf", "stray.conf"}
        assert kept["app.conf"].read_text() == "port 9999\n"
        assert kept["stray.conf"].read_text() == "not on the active\n"
        assert all(p.is_relative_to(etc_pair.base / "state2" / "backups") for p in kept.values())
    finally:
        assert third.stop() == 0
    fourth = RunningDaemon(etc_pair)  # a restart does not forget them
    try:
        status = fourth.wait_state("syncing")
        assert status["backup_count"] == 2
        assert {Path(b["path"]).name for b in status["backups"]} == {"app.conf", "stray.conf"}
        assert "(2 in all)" in etc_pair.bmsync("status").stdout
    finally:
        assert fourth.stop() == 0


def test_fifos_are_listed_by_status_and_logged_once(pair: Pair) -> None:
    etc = pair.active / "etc"
    etc.mkdir()
    (etc / "a.conf").write_text("a\n")
    os.mkfifo(etc / "initctl")
    daemon = RunningDaemon(pair)
    try:
        status = daemon.wait_state("syncing")
        assert status["unsupported"] == ["/etc/initctl"] and status["errors"] == []
        wait_for(lambda: (pair.passive / "etc/a.conf").exists(), 10, "a.conf on the peer")
        assert not (pair.passive / "etc/initctl").exists()

        os.mkfifo(etc / "other.fifo")  # found by the daemon's batch scan
        wait_for(
            lambda: daemon.status()["unsupported"] == ["/etc/initctl", "/etc/other.fifo"],
            30,
            "the new FIFO listed",
        )
        (etc / "initctl").unlink()
        wait_for(lambda: daemon.status()["unsupported"] == ["/etc/other.fifo"], 30, "initctl gone")
        resynced = pair.bmsync("resync")  # a full reconcile, through the daemon
        assert resynced.returncode == 0, resynced.stderr
        status = daemon.status()
        assert status["unsupported"] == ["/etc/other.fifo"] and status["errors"] == []
        assert "not synced: FIFOs, sockets or device nodes" in pair.bmsync("status").stdout
        log = daemon.log_path.read_text(errors="replace")
        assert log.count("unsupported_file") == 2, log[-5000:]  # once per path
        assert "path=/etc/other.fifo" in log and "sync.exclude" in log
    finally:
        assert daemon.stop() == 0


def test_a_sparse_file_changed_later_stays_sparse_on_the_passive(etc_pair: Pair) -> None:
    """A delta would be written in full: a sparse file goes whole, its holes
    as holes, also when the passive holds its previous version."""
    pair = etc_pair
    image = pair.active / "etc" / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
        f.write(b"first version\n")
    running = RunningDaemon(pair)
    try:
        running.wait_state("syncing")
        converge(pair, timeout_s=30)
        with open(image, "r+b") as f:
            f.seek(32 << 20)
            f.write(b"changed in the middle\n")
        converge(pair, timeout_s=30)
        passive = pair.passive / "etc" / "disk.img"
        assert passive.stat().st_blocks * 512 < 1 << 20  # still sparse
    finally:
        assert running.stop() == 0
