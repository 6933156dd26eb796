"""`bmsync resync` and `verify` end to end, over a real OpenSSH sshd."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
from pathlib import Path

from bmsync.core.errors import TreeTooLarge
from tests.helpers import walk
from tests.integration.conftest import Pair
from tests.integration.trees import populate_odd, random_changes
from tests.sshd import copy_tree, write_config


def getfacl(path: Path) -> str:
    return subprocess.run(
        ["getfacl", "-cp", str(path)], capture_output=True, text=True, check=True
    ).stdout


def test_etc_copy_with_odd_names_resyncs_identically(pair: Pair) -> None:
    copy_tree(Path("/etc"), pair.active / "etc")
    populate_odd(pair.active / "etc")

    done = pair.bmsync("resync")
    assert done.returncode == 0, done.stderr
    assert "peer in sync" in done.stdout

    checked = pair.bmsync("verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "in sync" in checked.stdout

    local, peer = walk(pair.active), walk(pair.passive)
    assert len(local) > 500
    assert {k for k in local if local[k] != peer.get(k)} == set()
    assert local.keys() == peer.keys()
    odd = pair.passive / "etc" / "odd"
    assert os.getxattr(odd / "xattr.conf", "user.bmsync.test") == b"value \x00 with nul"
    assert getfacl(odd / "acl.conf") == getfacl(pair.active / "etc/odd/acl.conf")
    assert "user:1234:rw-" in getfacl(odd / "acl.conf")
    assert not any(p.name.startswith(".bmsync-tmp.") for p in pair.passive.rglob("*"))


def test_verify_reports_each_difference_and_exits_1(pair: Pair) -> None:
    etc = pair.active / "etc"
    etc.mkdir()
    (etc / "a.conf").write_text("a\n")
    (etc / "b.conf").write_text("b\n")
    assert pair.bmsync("resync").returncode == 0
    (pair.passive / "etc/a.conf").write_text("edited on the passive\n")
    (pair.passive / "etc/b.conf").chmod(0o600)
    (pair.passive / "etc/extra.conf").write_text("only here\n")

    checked = pair.bmsync("verify")
    assert checked.returncode == 1
    assert "differs /etc/a.conf: content" in checked.stdout
    assert "differs /etc/b.conf: mode 0644 vs 0600" in checked.stdout
    assert "differs /etc/extra.conf: only on peer" in checked.stdout
    assert "differs /etc: mtime" in checked.stdout  # extra.conf changed it
    assert "4 difference(s)" in checked.stdout


def test_same_size_rewrite_in_the_same_second_is_sent(pair: Pair) -> None:
    conf = pair.active / "etc" / "bm-webserver.conf"
    conf.parent.mkdir()
    conf.write_text("listen port 8080\n")
    assert pair.bmsync("resync").returncode == 0
    before = conf.stat()

    conf.write_text("listen port 8081\n")
    # Same size, and the very same mtime, to the nanosecond: only the digest
    # can tell (rsync's quick check and lsyncd keep the stale file here).
    os.utime(conf, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert conf.stat().st_size == before.st_size

    report = pair.resync_json()
    assert report["files_sent"] == 1
    assert (pair.passive / "etc/bm-webserver.conf").read_text() == "listen port 8081\n"
    assert pair.bmsync("verify").returncode == 0


def test_200_random_changes_converge_and_a_quiet_resync_sends_nothing(pair: Pair) -> None:
    etc = pair.active / "etc"
    copy_tree(Path("/etc"), etc)
    populate_odd(etc)
    assert pair.bmsync("resync").returncode == 0

    actions = random_changes(etc, random.Random(20261124), 200)
    assert len(actions) == 200
    assert len(set(actions)) >= 10  # every kind of change, not just one

    report = pair.resync_json()
    assert report["converged"] and report["failures"] == []
    assert any(line.startswith("move ") for line in report["planned"])
    checked = pair.bmsync("verify")
    assert checked.returncode == 0, checked.stdout
    local, peer = walk(pair.active), walk(pair.passive)
    assert {k for k in local.keys() | peer.keys() if local.get(k) != peer.get(k)} == set()

    quiet = pair.resync_json()
    assert quiet["planned"] == []
    assert quiet["files_sent"] == 0 and quiet["bytes_sent"] == 0


def test_dry_run_lists_changes_and_writes_nothing(pair: Pair) -> None:
    etc = pair.active / "etc"
    etc.mkdir()
    (etc / "new.conf").write_text("x\n")
    (pair.passive / "etc").mkdir()
    (pair.passive / "etc/old.conf").write_text("y\n")
    before = walk(pair.passive)

    done = pair.bmsync("resync", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "send    /etc/new.conf (2 bytes)" in done.stdout
    assert "delete  /etc/old.conf" in done.stdout
    assert "nothing was changed" in done.stdout
    assert walk(pair.passive) == before


def test_bluemind_preset_keeps_the_passive_identity(pair: Pair) -> None:
    pair.configure(paths=(), preset="bluemind")
    for root, name in ((pair.active, "bm1"), (pair.passive, "bm2")):
        (root / "etc/ssh").mkdir(parents=True)
        (root / "etc/hostname").write_text(f"{name}\n")
        (root / "etc/machine-id").write_text(f"{name}-id\n")
        (root / "etc/ssh/ssh_host_ed25519_key").write_text(f"{name} host key\n")
    (pair.active / "etc/ssh/sshd_config").write_text("PermitRootLogin no\n")
    es = pair.active / "usr/share/bm-elasticsearch/config/elasticsearch.yml"
    es.parent.mkdir(parents=True)
    es.write_text("cluster.name: bluemind\n")

    assert pair.bmsync("resync").returncode == 0
    p = pair.passive
    assert (p / "etc/hostname").read_text() == "bm2\n"
    assert (p / "etc/machine-id").read_text() == "bm2-id\n"
    assert (p / "etc/ssh/ssh_host_ed25519_key").read_text() == "bm2 host key\n"
    assert (p / "etc/ssh/sshd_config").read_text() == "PermitRootLogin no\n"
    assert (p / "usr/share/bm-elasticsearch/config/elasticsearch.yml").read_text() == (
        "cluster.name: bluemind\n"
    )
    assert pair.bmsync("verify").returncode == 0

    # a sync path missing on the active is reported, and the passive's copy kept
    es.unlink()
    done = pair.bmsync("resync")
    assert done.returncode == 0, done.stderr
    assert (p / "usr/share/bm-elasticsearch/config/elasticsearch.yml").exists()
    assert "/usr/share/bm-elasticsearch/config/elasticsearch.yml does not exist here" in (
        done.stdout
    )


def test_many_directories_in_one_batch_under_a_low_descriptor_limit(pair: Pair) -> None:
    pair.sshd.stop()
    pair.sshd.start(open_files=64)
    for i in range(300):
        d = pair.active / "etc" / f"d{i:03}"
        d.mkdir(parents=True)
        (d / "f.conf").write_text(f"{i}\n")
    report = pair.resync_json()
    assert report["converged"] and report["files_sent"] == 300
    assert pair.bmsync("verify").returncode == 0


def test_temp_files_left_by_a_killed_agent_are_removed_by_the_next_resync(pair: Pair) -> None:
    (pair.active / "etc").mkdir()
    (pair.active / "etc/a.conf").write_text("a\n")
    (pair.passive / "etc").mkdir()
    leftover = pair.passive / "etc" / ".bmsync-tmp.0123456789abcdef"
    leftover.write_text("half a file\n")
    assert pair.bmsync("verify").returncode == 1  # a.conf is missing; leftover not listed
    assert leftover.exists()  # verify never writes
    assert pair.bmsync("resync").returncode == 0
    assert not leftover.exists()
    assert sorted(p.name for p in (pair.passive / "etc").iterdir()) == ["a.conf"]


def test_moved_files_are_renamed_on_the_peer_not_resent(pair: Pair) -> None:
    etc = pair.active / "etc"
    (etc / "old.d").mkdir(parents=True)
    (etc / "old.d/big.db").write_bytes(random.Random(1).randbytes(3 * 1024 * 1024))
    (etc / "old.d/small.conf").write_text("small\n")
    assert pair.bmsync("resync").returncode == 0

    (etc / "old.d").rename(etc / "new.d")
    report = pair.resync_json()
    assert "move    /etc/old.d/big.db -> /etc/new.d/big.db" in report["planned"]
    assert "delete  /etc/old.d/" in report["planned"]
    assert report["files_sent"] == 0 and report["bytes_sent"] == 0
    assert pair.bmsync("verify").returncode == 0
    assert not (pair.passive / "etc/old.d").exists()


def test_fifos_are_reported_not_synced_and_the_peer_copy_is_kept(pair: Pair) -> None:
    etc = pair.active / "etc"
    etc.mkdir()
    os.mkfifo(etc / "initctl")
    (etc / "a.conf").write_text("a\n")
    (pair.passive / "etc").mkdir()
    (pair.passive / "etc/initctl").write_text("the passive's own\n")

    done = pair.bmsync("resync")
    assert done.returncode == 0, done.stderr
    assert "note: /etc/initctl is a FIFO, socket or device node; not synced" in done.stdout
    assert (pair.passive / "etc/initctl").read_text() == "the passive's own\n"
    assert (pair.passive / "etc/a.conf").read_text() == "a\n"

    # the peer still holds a file where this node has a FIFO: never "in sync"
    checked = pair.bmsync("verify")
    assert checked.returncode == 1, checked.stderr
    assert "note: /etc/initctl is a FIFO, socket or device node; not synced" in checked.stdout
    assert "differs /etc/initctl: a FIFO, socket or device node here, a file on the peer" in (
        checked.stdout
    )
    as_json = json.loads(pair.bmsync("verify", "--json").stdout)
    assert not as_json["in_sync"] and as_json["unsupported"] == ["/etc/initctl"]
    (pair.passive / "etc/initctl").unlink()  # nothing there on the peer: nothing differs
    assert pair.bmsync("resync").returncode == 0  # (the directory's mtime changed)
    as_json = json.loads(pair.bmsync("verify", "--json").stdout)
    assert as_json["in_sync"] and as_json["unsupported"] == ["/etc/initctl"]


def test_sparse_files_keep_their_holes_on_the_passive(pair: Pair) -> None:
    """1.5 GB of holes must not take 1.5 GB on the passive (rsync -S)."""
    etc = pair.active / "etc"
    etc.mkdir()
    shapes = {
        "data-holes-data.img": [(0, b"head"), (100 << 20, b"middle"), ((256 << 20) - 4, b"tail")],
        "all-hole.img": [],
        "hole-at-the-end.img": [(0, b"only at the start")],
    }
    for name, writes in shapes.items():
        with open(etc / name, "wb") as f:
            f.truncate(256 << 20)
            for offset, data in writes:
                f.seek(offset)
                f.write(data)
    done = pair.bmsync("resync", "--json")
    assert done.returncode == 0, done.stderr
    sent = json.loads(done.stdout)["bytes_sent"]
    assert sent < 1 << 20  # the data, not the holes
    for name in shapes:
        here, there = etc / name, pair.passive / "etc" / name
        assert there.stat().st_size == here.stat().st_size == 256 << 20
        assert there.stat().st_blocks * 512 < 1 << 20, name  # still sparse
        assert _digest(there) == _digest(here), name
    checked = json.loads(pair.bmsync("verify", "--json").stdout)
    assert checked["in_sync"], checked


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def test_a_tree_past_max_entries_stops_the_sync_with_advice(pair: Pair) -> None:
    """sync.max_entries bounds what a node holds of a manifest: the agent
    stops listing its tree past it, the sender stops reading the peer's,
    and nothing is written either way."""
    etc = pair.active / "etc"
    etc.mkdir()
    for n in range(30):
        (etc / f"{n:02}.conf").write_text(f"{n}\n")
    assert pair.bmsync("resync").returncode == 0
    (etc / "00.conf").write_text("changed\n")

    pair.configure()
    write_config(
        pair.passive_conf,
        "bm2",
        pair.passive,
        pair.base / "state2",
        extra_sync=("max_entries: 10",),
    )
    listed = pair.bmsync("resync")
    assert listed.returncode == 4, listed.stdout + listed.stderr
    assert f"the sync set under {pair.passive} holds more than 10 entries" in listed.stderr
    assert "raise sync.max_entries in the configuration of both nodes" in listed.stderr

    pair.configure()
    write_config(
        pair.active_conf,
        "bm1",
        pair.active,
        pair.base / "state1",
        pair.sshd,
        extra_sync=("max_entries: 10",),
    )
    read = pair.bmsync("resync")
    assert read.returncode == TreeTooLarge.exit_code, read.stdout + read.stderr
    assert "the peer's manifest holds more than 10 entries (sync.max_entries)" in read.stderr
    assert (pair.passive / "etc/00.conf").read_text() == "0\n"

    pair.configure()
    assert pair.bmsync("resync").returncode == 0
    assert (pair.passive / "etc/00.conf").read_text() == "changed\n"
