"""Each way the SSH link can fail gives its own clear error and exit code 3,
and nothing is written on the passive node."""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import Pair
from tests.sshd import free_port, keygen, write_config


def _prepare(pair: Pair) -> None:
    (pair.active / "etc").mkdir()
    (pair.active / "etc/a.conf").write_text("a\n")


def test_unreachable_peer(pair: Pair) -> None:
    _prepare(pair)
    port = free_port()  # nothing listens there
    write_config(pair.active_conf, "bm1", pair.active, pair.base / "state1", pair.sshd, port=port)
    done = pair.bmsync("resync")
    assert done.returncode == 3
    assert f"root@127.0.0.1:{port}: cannot connect" in done.stderr
    assert "sshd runs on the peer" in done.stderr
    assert list(pair.passive.iterdir()) == []


def test_changed_host_key_names_the_fingerprint_seen(pair: Pair, tmp_path: Path) -> None:
    _prepare(pair)
    other = keygen(tmp_path / "other_host_key")
    pair.sshd.known_hosts.write_text(f"[127.0.0.1]:{pair.sshd.port} {other}\n")
    done = pair.bmsync("resync")
    assert done.returncode == 3
    assert "HOST KEY CHANGED" in done.stderr
    real = pair.sshd.host_pub.split()[1]
    assert "SHA256:" in done.stderr
    assert real not in done.stderr  # the fingerprint, not the key, is shown
    assert list(pair.passive.iterdir()) == []


def test_unknown_host_key_is_refused_never_accepted(pair: Pair) -> None:
    _prepare(pair)
    pair.sshd.known_hosts.write_text("")
    done = pair.bmsync("verify")
    assert done.returncode == 3
    assert "unknown host key SHA256:" in done.stderr
    assert "ssh-keyscan" in done.stderr
    assert pair.sshd.known_hosts.read_text() == ""


def test_refused_key(pair: Pair) -> None:
    _prepare(pair)
    pair.sshd.authorized_keys.write_text("")
    done = pair.bmsync("resync")
    assert done.returncode == 3
    assert f"the peer refused key {pair.sshd.client_key}" in done.stderr
    assert "authorized_keys" in done.stderr
    assert list(pair.passive.iterdir()) == []


def test_missing_bmsync_on_the_peer(pair: Pair) -> None:
    _prepare(pair)
    pair.sshd.authorize(pair.passive_conf, forced="/opt/nowhere/bmsync agent")
    done = pair.bmsync("resync")
    assert done.returncode == 3
    assert "/opt/nowhere/bmsync: No such file or directory" in done.stderr
    # a forced command runs whatever the client asks: the fix is on the peer
    assert "~root/.ssh/authorized_keys" in done.stderr
    assert 'command="/usr/local/bin/bmsync agent"' in done.stderr
    assert list(pair.passive.iterdir()) == []


def test_broken_agent_config_is_reported_by_the_sender(pair: Pair) -> None:
    _prepare(pair)
    pair.passive_conf.write_text("node: bm2\nsync:\n  root: relative/dir\n")
    done = pair.bmsync("resync")
    assert done.returncode == 3
    assert "the peer's agent cannot start" in done.stderr
    assert "bm2.yaml line 3: sync.root: 'relative/dir' is a relative path" in done.stderr


def test_a_receiver_needs_no_key_of_its_own(pair: Pair, tmp_path: Path) -> None:
    """bm2 only receives: the peer section it keeps for the day roles swap
    names a key not made yet. The agent does not read that section, so bm1
    syncs to it; `config check` on bm2 still says the key is missing."""
    _prepare(pair)
    missing = tmp_path / "not-made-yet" / "id_ed25519"
    text = pair.passive_conf.read_text()
    pair.passive_conf.write_text(
        text + f"peer:\n  host: 127.0.0.1\n  identity: {missing}\n"
        f"  known_hosts: {tmp_path / 'not-made-yet' / 'known_hosts'}\n"
    )
    done = pair.bmsync("resync")
    assert done.returncode == 0, done.stderr
    assert (pair.passive / "etc/a.conf").read_text() == "a\n"
    done = pair.bmsync("verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "in sync" in done.stdout

    check = pair.bmsync("config", "check", conf=pair.passive_conf)
    assert check.returncode == 1
    assert f"peer.identity: file {missing} does not exist" in check.stderr
