"""The configuration file: decoding to frozen objects, and precise errors."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from bmsync.config.model import Config, PeerConfig, SyncConfig
from bmsync.config.parse import load, parse
from bmsync.core.errors import ConfigError

SOURCE = Path("/etc/bmsync/bmsync.yaml")


def keygen(path: Path, passphrase: str = "") -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(path)], check=True
    )
    return path


@pytest.fixture(scope="module")
def a_key(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return keygen(tmp_path_factory.mktemp("key") / "id_ed25519").read_bytes()


@pytest.fixture
def keys(tmp_path: Path, a_key: bytes) -> tuple[Path, Path]:
    identity = tmp_path / "id_ed25519"
    known_hosts = tmp_path / "known_hosts"
    identity.write_bytes(a_key)
    known_hosts.write_text("bm2 ssh-ed25519 AAAA\n")
    return identity, known_hosts


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, SOURCE)
    message = str(info.value)
    assert str(SOURCE) in message
    return message


def full_text(tmp_path: Path, identity: Path, known_hosts: Path) -> str:
    return (
        "# bmsync on bm1\n"
        "node: bm1\n"
        "state_dir: /var/lib/bmsync-test\n"
        "peer:\n"
        "  host: bm2.example.org\n"
        "  port: 2222\n"
        "  user: sync\n"
        f"  identity: {identity}\n"
        f"  known_hosts: {known_hosts}\n"
        "  agent_command: /usr/local/bin/bmsync agent\n"
        "  connect_timeout_s: 5\n"
        "  keepalive_interval_s: 30.5\n"
        "sync:\n"
        "  preset: none\n"
        "  paths:\n"
        "    - /etc/postfix\n"
        "    - /srv/conf/app.yml\n"
        "  exclude: ['*.bak', '!/etc/postfix/keep.bak']\n"
        f"  root: {tmp_path}\n"
        "  batch_window_ms: 50\n"
        "  max_delay_ms: 2000\n"
    )


# --- valid configurations ----------------------------------------------------


def test_full_config_decodes(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    identity, known_hosts = keys
    config = parse(full_text(tmp_path, identity, known_hosts), SOURCE)
    assert config == Config(
        source=SOURCE,
        node="bm1",
        state_dir=Path("/var/lib/bmsync-test"),
        peer=PeerConfig(
            host="bm2.example.org",
            port=2222,
            user="sync",
            identity=identity,
            known_hosts=known_hosts,
            agent_command="/usr/local/bin/bmsync agent",
            connect_timeout_s=5.0,
            keepalive_interval_s=30.5,
        ),
        sync=SyncConfig(
            preset="none",
            paths=("/etc/postfix", "/srv/conf/app.yml"),
            exclude=("*.bak", "!/etc/postfix/keep.bak"),
            root=tmp_path,
            batch_window_ms=50,
            max_delay_ms=2000,
        ),
    )
    assert config.peer is not None
    assert isinstance(config.peer.connect_timeout_s, float)
    assert isinstance(config.peer.port, int)
    assert config.require_peer() is config.peer


def test_config_objects_are_frozen(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    config = parse(full_text(tmp_path, *keys), SOURCE)
    assert config.peer is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node = "bm2"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.peer.port = 22  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sync.root = Path("/")  # type: ignore[misc]


def test_full_config_syncset(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    config = parse(full_text(tmp_path, *keys), SOURCE)
    s = config.syncset()
    assert s.tops == (b"etc/postfix", b"srv/conf/app.yml")
    assert s.covers(b"etc/postfix/main.cf", is_dir=False)
    assert not s.covers(b"etc/postfix/main.cf.bak", is_dir=False)
    assert s.covers(b"etc/postfix/keep.bak", is_dir=False)
    assert not s.covers(b"etc/hostname", is_dir=False)


def test_minimal_config_defaults() -> None:
    config = parse("node: bm1\n", SOURCE)
    assert config.source == SOURCE
    assert config.node == "bm1"
    assert config.state_dir == Path("/var/lib/bmsync")
    assert config.peer is None
    assert config.sync == SyncConfig(
        preset="bluemind",
        paths=(),
        exclude=(),
        root=Path("/"),
        batch_window_ms=10,
        max_delay_ms=1000,
    )


def test_peer_defaults(keys: tuple[Path, Path]) -> None:
    identity, known_hosts = keys
    text = f"node: bm1\npeer:\n  host: bm2\n  identity: {identity}\n  known_hosts: {known_hosts}\n"
    config = parse(text, SOURCE)
    assert config.peer == PeerConfig(
        host="bm2",
        port=22,
        user="root",
        identity=identity,
        known_hosts=known_hosts,
        agent_command="bmsync agent",
        connect_timeout_s=10.0,
        keepalive_interval_s=15.0,
    )


def test_empty_lists_and_null_lists(tmp_path: Path) -> None:
    config = parse(f"node: bm1\nsync:\n  root: {tmp_path}\n  paths:\n  exclude: []\n", SOURCE)
    assert config.sync.paths == ()
    assert config.sync.exclude == ()


def test_require_peer_without_peer_section() -> None:
    config = parse("node: bm1\n", SOURCE)
    with pytest.raises(ConfigError, match="no 'peer:' section") as info:
        config.require_peer()
    assert str(SOURCE) in str(info.value)


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bmsync.yaml"
    path.write_text(f"node: bm-1.a_b\nsync:\n  root: {tmp_path}\n")
    config = load(path)
    assert config.source == path
    assert config.node == "bm-1.a_b"
    assert config.sync.root == tmp_path


# --- errors: file, line and dotted key ------------------------------------------


def test_malformed_yaml_names_the_line() -> None:
    message = error_of("node: bm1\npeer:\n  host: a\n   port: 22\n")
    assert f"{SOURCE} line 4: not valid YAML" in message


def test_malformed_yaml_tab() -> None:
    message = error_of("node: bm1\n\tpeer: x\n")
    assert f"{SOURCE} line 2: not valid YAML" in message


def test_two_documents_are_an_error() -> None:
    message = error_of("node: a\n---\nnode: b\n")
    assert f"{SOURCE} line 2: not valid YAML" in message


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    message = error_of(f"node: bm1\nsync:\n  root: {tmp_path}\n  paths_: [/etc]\n")
    assert f"{SOURCE} line 4: sync.paths_: unknown key" in message
    assert "did you mean 'paths'" in message


def test_unknown_key_without_close_match_lists_known_keys() -> None:
    message = error_of("node: bm1\nzzzzzz: 1\n")
    assert f"{SOURCE} line 2: zzzzzz: unknown key" in message
    assert "known keys: node, state_dir, control_socket, peer, sync" in message


def test_unknown_top_level_key_suggests() -> None:
    message = error_of("nodes: bm1\n")
    assert f"{SOURCE} line 1: nodes: unknown key; did you mean 'node'?" in message


def test_wrong_type(keys: tuple[Path, Path]) -> None:
    identity, known_hosts = keys
    text = (
        "node: bm1\n"
        "peer:\n"
        "  host: bm2\n"
        "  port: abc\n"
        f"  identity: {identity}\n"
        f"  known_hosts: {known_hosts}\n"
    )
    message = error_of(text)
    assert f"{SOURCE} line 4: peer.port: expected an integer, got 'abc'" in message


def test_boolean_is_not_an_integer(keys: tuple[Path, Path]) -> None:
    identity, known_hosts = keys
    text = f"node: bm1\npeer:\n  host: bm2\n  port: true\n  identity: {identity}\n"
    message = error_of(text + f"  known_hosts: {known_hosts}\n")
    assert f"{SOURCE} line 4: peer.port: expected an integer" in message


@pytest.mark.parametrize("port", ["0", "70000", "-1"])
def test_out_of_range_port(keys: tuple[Path, Path], port: str) -> None:
    identity, known_hosts = keys
    text = (
        "node: bm1\n"
        "peer:\n"
        f"  identity: {identity}\n"
        f"  known_hosts: {known_hosts}\n"
        "  host: bm2\n"
        f"  port: {port}\n"
    )
    message = error_of(text)
    assert f"{SOURCE} line 6: peer.port: {port} is out of range" in message


def test_out_of_range_integer() -> None:
    message = error_of("node: bm1\nsync:\n  root: /\n  max_delay_ms: 0\n")
    assert f"{SOURCE} line 4: sync.max_delay_ms: 0 is out of range" in message


@pytest.mark.parametrize("value", ["0", "0.05", "601", ".nan", ".inf"])
def test_out_of_range_float(keys: tuple[Path, Path], value: str) -> None:
    identity, known_hosts = keys
    text = (
        "node: bm1\n"
        "peer:\n"
        "  host: bm2\n"
        f"  identity: {identity}\n"
        f"  known_hosts: {known_hosts}\n"
        f"  connect_timeout_s: {value}\n"
    )
    message = error_of(text)
    assert f"{SOURCE} line 6: peer.connect_timeout_s:" in message
    assert "is out of range" in message


def test_relative_path() -> None:
    message = error_of("node: bm1\nstate_dir: var/lib\n")
    assert f"{SOURCE} line 2: state_dir: 'var/lib' is a relative path" in message


def test_relative_sync_path() -> None:
    message = error_of("node: bm1\nsync:\n  paths:\n    - /etc\n    - srv/x\n")
    assert f"{SOURCE} line 5: sync.paths[1]: 'srv/x' is a relative path" in message


def test_sync_path_with_dotdot() -> None:
    message = error_of("node: bm1\nsync:\n  paths: [/etc/../root]\n")
    assert f"{SOURCE} line 3: sync.paths[0]:" in message
    assert "'..'" in message


def test_missing_identity_file(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    _, known_hosts = keys
    missing = tmp_path / "nope"
    text = f"node: bm1\npeer:\n  host: bm2\n  known_hosts: {known_hosts}\n  identity: {missing}\n"
    message = error_of(text)
    assert f"{SOURCE} line 5: peer.identity: file {missing} does not exist" in message


def test_a_receiver_does_not_read_the_peer_section(tmp_path: Path) -> None:
    """The agent's view: a peer section with a key not made yet (or any
    mistake there) is not its business."""
    text = (
        f"node: bm2\nsync:\n  root: {tmp_path}\n"
        f"peer:\n  host: bm1\n  identity: {tmp_path / 'nope'}\n  port: ssh\n"
    )
    conf = parse(text, SOURCE, receiver=True)
    assert conf.peer is None and conf.node == "bm2" and conf.sync.root == tmp_path
    assert "peer.port" in error_of(text)


def test_identity_that_is_a_directory(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    _, known_hosts = keys
    text = f"node: bm1\npeer:\n  host: bm2\n  identity: {tmp_path}\n  known_hosts: {known_hosts}\n"
    message = error_of(text)
    assert f"{SOURCE} line 4: peer.identity: {tmp_path} is not a regular file" in message


def test_identity_locked_by_a_passphrase(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """The daemon runs unattended: nobody is there to type a passphrase."""
    _, known_hosts = keys
    locked = keygen(tmp_path / "locked", passphrase="secret")
    text = f"node: bm1\npeer:\n  host: bm2\n  identity: {locked}\n  known_hosts: {known_hosts}\n"
    message = error_of(text)
    assert f"{SOURCE} line 4: peer.identity: {locked} is protected by a passphrase" in message
    assert f"ssh-keygen -p -N '' -f {locked}" in message
    assert f"ssh-keygen -t ed25519 -N '' -f {locked}" in message


@pytest.mark.parametrize("content", ["", "key\n", "ssh-ed25519 AAAAC3Nz bmsync@bm1\n"])
def test_identity_that_is_no_private_key(
    tmp_path: Path, keys: tuple[Path, Path], content: str
) -> None:
    _, known_hosts = keys
    wrong = tmp_path / "wrong"
    wrong.write_text(content)
    text = f"node: bm1\npeer:\n  host: bm2\n  identity: {wrong}\n  known_hosts: {known_hosts}\n"
    message = error_of(text)
    assert f"{SOURCE} line 4: peer.identity: {wrong} is not an SSH private key" in message
    assert f"ssh-keygen -t ed25519 -N '' -f {wrong}" in message


def test_missing_default_identity_file(keys: tuple[Path, Path]) -> None:
    if Path("/etc/bmsync/id_ed25519").exists():
        pytest.skip("this machine has the default identity file")
    _, known_hosts = keys
    message = error_of(f"node: bm1\npeer:\n  host: bm2\n  known_hosts: {known_hosts}\n")
    assert f"{SOURCE} line 3: peer.identity: not set, and the default" in message


def test_missing_root_directory(tmp_path: Path) -> None:
    message = error_of(f"node: bm1\nsync:\n  root: {tmp_path / 'nope'}\n")
    assert f"{SOURCE} line 3: sync.root: directory {tmp_path / 'nope'} does not exist" in message


def test_missing_node() -> None:
    message = error_of("# comment\n\nstate_dir: /var\n")
    assert f"{SOURCE} line 3: node: missing; this key is required" in message


def test_invalid_node_id() -> None:
    message = error_of("node: 'bm 1'\n")
    assert f"{SOURCE} line 1: node: 'bm 1' is not a node id" in message


def test_missing_peer_host(keys: tuple[Path, Path]) -> None:
    identity, known_hosts = keys
    text = f"node: bm1\npeer:\n  port: 22\n  identity: {identity}\n  known_hosts: {known_hosts}\n"
    message = error_of(text)
    assert f"{SOURCE} line 3: peer.host: missing; this key is required" in message


def test_empty_peer_host(keys: tuple[Path, Path]) -> None:
    identity, known_hosts = keys
    text = f"node: bm1\npeer:\n  host: ' '\n  identity: {identity}\n  known_hosts: {known_hosts}\n"
    message = error_of(text)
    assert f"{SOURCE} line 3: peer.host: must not be empty" in message


def test_duplicate_key() -> None:
    message = error_of("node: bm1\nstate_dir: /a\nstate_dir: /b\n")
    assert f"{SOURCE} line 3: state_dir: given twice" in message


def test_duplicate_nested_key(tmp_path: Path) -> None:
    message = error_of(f"node: bm1\nsync:\n  root: {tmp_path}\n  preset: none\n  root: /\n")
    assert f"{SOURCE} line 5: sync.root: given twice" in message


def test_list_where_a_mapping_is_expected() -> None:
    message = error_of("node: bm1\nsync:\n  - root\n")
    assert f"{SOURCE} line 3: sync: expected a mapping, got a list" in message


def test_top_level_list() -> None:
    message = error_of("- node: bm1\n")
    assert f"{SOURCE} line 1: top level: expected a mapping, got a list" in message


def test_mapping_where_a_value_is_expected() -> None:
    message = error_of("node:\n  name: bm1\n")
    assert f"{SOURCE} line 2: node: expected a single value, got a mapping" in message


def test_value_where_a_list_is_expected() -> None:
    message = error_of("node: bm1\nsync:\n  paths: /etc\n")
    assert f"{SOURCE} line 3: sync.paths: expected a list, got a value" in message


def test_invalid_exclude_pattern() -> None:
    message = error_of("node: bm1\nsync:\n  exclude:\n    - '*.bak'\n    - '[abc'\n")
    assert f"{SOURCE} line 5: sync.exclude[1]:" in message
    assert "unclosed '['" in message


def test_exclude_pattern_with_lone_backslash() -> None:
    message = error_of("node: bm1\nsync:\n  exclude: ['foo\\']\n")
    assert f"{SOURCE} line 3: sync.exclude[0]:" in message
    assert "lone backslash" in message


@pytest.mark.parametrize("preset", ["redhat", "BlueMind", "''"])
def test_unknown_preset(preset: str) -> None:
    message = error_of(f"node: bm1\nsync:\n  preset: {preset}\n")
    assert f"{SOURCE} line 3: sync.preset:" in message
    assert "is not one of: bluemind, none" in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(text: str) -> None:
    message = error_of(text)
    assert "the file is empty" in message
    assert "'node:'" in message


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert f"{path}: no such file" in str(info.value)


def test_load_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"node: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert f"{path}: cannot read" in str(info.value)


def test_load_error_names_the_loaded_file(tmp_path: Path) -> None:
    path = tmp_path / "bmsync.yaml"
    path.write_text("node: bm1\nstate_dir: relative\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert f"{path} line 2: state_dir:" in str(info.value)


def test_unknown_yaml_tag_is_a_config_error() -> None:
    message = error_of("node: !foo bar\n")
    assert f"{SOURCE} line 1: node:" in message


def test_impossible_date_is_a_config_error() -> None:
    message = error_of("node: bm1\nstate_dir: 2024-13-01\n")
    assert f"{SOURCE} line 2: state_dir:" in message


def test_the_vip_is_read() -> None:
    conf = parse("node: bm1\nha:\n  vip:\n    address: 10.0.0.10\n    interface: eth0\n", SOURCE)
    assert conf.ha.vip is not None
    assert (conf.ha.vip.address, conf.ha.vip.interface) == ("10.0.0.10", "eth0")
    assert parse("node: bm1\n", SOURCE).ha.vip is None


@pytest.mark.parametrize(
    ("vip", "line", "expected"),
    [
        (
            "    address: 10.0.0.300\n    interface: eth0\n",
            4,
            "ha.vip.address: '10.0.0.300' is not",
        ),
        ("    address: 10.0.0.1\n    interface: 'eth 0'\n", 5, "is not a network interface name"),
        ("    address: 10.0.0.1\n", 4, "ha.vip.interface: missing"),
        ("    address: 10.0.0.1\n    interface: e\n    ttl: 3\n", 6, "ha.vip.ttl: unknown key"),
    ],
)
def test_bad_vip(vip: str, line: int, expected: str) -> None:
    message = error_of(f"node: bm1\nha:\n  vip:\n{vip}")
    assert f"{SOURCE} line {line}: " in message and expected in message
