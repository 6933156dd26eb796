"""The configuration file: YAML in, frozen typed objects out.

Decoding walks yaml's node tree (not the plain dict) so every error names
the file, the line and the key: "bmsync.yaml line 7: sync.paths_: unknown
key; did you mean 'paths'?". Unknown keys, wrong types, relative paths,
missing files and a peer key that needs a passphrase are all errors;
nothing is guessed.

A receiver (``bmsync agent``) reads the same file with ``receiver=True``:
the ``peer`` section, which only a sender uses, is then not read at all, so
a key not made yet (or a mistake there) never stops the sync towards it.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bmsync.config.presets import BUILTIN_EXCLUDES, PRESETS, PresetPath
from bmsync.core.brake import BrakeLimits
from bmsync.core.errors import ConfigError
from bmsync.core.excludes import PatternError, Rule, SyncSet
from bmsync.core.manifest import MAX_ENTRIES
from bmsync.core.sshkey import KeyState, check_private_key

DEFAULT_PATH = Path("/etc/bmsync/bmsync.yaml")
# A private key file is a few KiB; more is not a key (only this much is read).
KEY_READ_BYTES = 1 << 20
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True)
class PeerConfig:
    host: str
    port: int
    user: str
    identity: Path
    known_hosts: Path
    agent_command: str
    connect_timeout_s: float
    keepalive_interval_s: float
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0


@dataclass(frozen=True)
class SyncConfig:
    preset: str
    paths: tuple[str, ...]
    exclude: tuple[str, ...]
    root: Path
    batch_window_ms: int
    max_delay_ms: int
    delete_brake_count: int = 100
    delete_brake_share: float = 0.10
    delete_brake_window_s: float = 60.0
    delta_cache_mb: int = 256
    queue_limit: int = 50_000
    max_entries: int = MAX_ENTRIES


@dataclass(frozen=True)
class VipConfig:
    """The floating IP: the guard checks that the active node holds it and
    that no other MAC answers for it (duplicate address detection)."""

    address: str
    interface: str
    check_interval_s: float = 5.0


@dataclass(frozen=True)
class HaConfig:
    vip: VipConfig | None = None


@dataclass(frozen=True)
class Config:
    source: Path
    node: str
    state_dir: Path
    peer: PeerConfig | None
    sync: SyncConfig
    control_socket: Path = Path("/run/bmsync/control.sock")
    ha: HaConfig = HaConfig()

    def sync_paths(self) -> list[PresetPath]:
        preset = PRESETS[self.sync.preset]
        added = [PresetPath(p, "added in sync.paths") for p in self.sync.paths]
        return [*preset.paths, *added]

    def exclude_rules(self) -> list[Rule]:
        """Preset rules, then the user's (which may re-include with ``!``),
        then bmsync's own, which nothing overrides."""
        preset = PRESETS[self.sync.preset]
        user = [Rule(p, "added in sync.exclude") for p in self.sync.exclude]
        return [*preset.excludes, *user, *BUILTIN_EXCLUDES]

    def syncset(self) -> SyncSet:
        return SyncSet.build([p.path for p in self.sync_paths()], self.exclude_rules())

    def brake_limits(self) -> BrakeLimits:
        sync = self.sync
        return BrakeLimits(
            sync.delete_brake_count, sync.delete_brake_share, sync.delete_brake_window_s
        )

    def require_peer(self) -> PeerConfig:
        if self.peer is None:
            raise ConfigError(
                f"{self.source}: no 'peer:' section; this command talks to the peer, "
                "so say where it is (host, identity, known_hosts)"
            )
        return self.peer


class _Required:
    pass


REQUIRED = _Required()
T = TypeVar("T")


@dataclass(frozen=True)
class _Ctx:
    source: Path

    def error(self, node: yaml.Node, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source} line {node.start_mark.line + 1}: {key}: {message}")


Converter = Callable[[yaml.Node, str, _Ctx], Any]


def _scalar(node: yaml.Node, key: str, ctx: _Ctx) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.error(node, key, f"expected a single value, got a {_shape(node)}")
    try:
        return yaml.SafeLoader("").construct_object(node)
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        # unknown tags (!foo), impossible dates (2024-13-01), ...
        problem = getattr(exc, "problem", None) or str(exc)
        raise ctx.error(node, key, f"cannot read this value: {problem}") from exc


def _shape(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    return "value"


def _typed(kind: type[T], words: str) -> Callable[[yaml.Node, str, _Ctx], T]:
    def convert(node: yaml.Node, key: str, ctx: _Ctx) -> T:
        value = _scalar(node, key, ctx)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ctx.error(node, key, f"expected {words}, got {value!r}")
        return value

    return convert


_str = _typed(str, "a string")
_int = _typed(int, "an integer")
_float = _typed(float, "a number")


def _ranged(convert: Converter, low: float, high: float) -> Converter:
    def check(node: yaml.Node, key: str, ctx: _Ctx) -> Any:
        value = convert(node, key, ctx)
        if not low <= value <= high:
            raise ctx.error(node, key, f"{value} is out of range ({low} to {high})")
        return value

    return check


def _nonempty(node: yaml.Node, key: str, ctx: _Ctx) -> str:
    value = _str(node, key, ctx)
    if not value.strip():
        raise ctx.error(node, key, "must not be empty")
    return value


def _ipv4(node: yaml.Node, key: str, ctx: _Ctx) -> str:
    value = _str(node, key, ctx)
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as exc:
        raise ctx.error(node, key, f"{value!r} is not an IPv4 address") from exc


def _interface(node: yaml.Node, key: str, ctx: _Ctx) -> str:
    value = _str(node, key, ctx)
    if not re.fullmatch(r"[A-Za-z0-9._@-]{1,15}", value):
        raise ctx.error(node, key, f"{value!r} is not a network interface name")
    return value


def _node_id(node: yaml.Node, key: str, ctx: _Ctx) -> str:
    value = _str(node, key, ctx)
    if not _NODE_ID.fullmatch(value):
        raise ctx.error(
            node, key, f"{value!r} is not a node id (letters, digits, '.', '_', '-'; 63 at most)"
        )
    return value


def _abs_path(node: yaml.Node, key: str, ctx: _Ctx) -> Path:
    value = _str(node, key, ctx)
    if not value.startswith("/"):
        raise ctx.error(node, key, f"{value!r} is a relative path; give an absolute one")
    if "\0" in value:
        raise ctx.error(node, key, "path contains a NUL character")
    return Path(value)


def _existing_file(node: yaml.Node, key: str, ctx: _Ctx) -> Path:
    path = _abs_path(node, key, ctx)
    if not path.exists():
        raise ctx.error(node, key, f"file {path} does not exist")
    if not path.is_file():
        raise ctx.error(node, key, f"{path} is not a regular file")
    return path


def _existing_dir(node: yaml.Node, key: str, ctx: _Ctx) -> Path:
    path = _abs_path(node, key, ctx)
    if not path.exists():
        raise ctx.error(node, key, f"directory {path} does not exist")
    if not path.is_dir():
        raise ctx.error(node, key, f"{path} is not a directory")
    return path


def _choice(*choices: str) -> Converter:
    def convert(node: yaml.Node, key: str, ctx: _Ctx) -> str:
        value = _str(node, key, ctx)
        if value not in choices:
            raise ctx.error(node, key, f"{value!r} is not one of: {', '.join(choices)}")
        return value

    return convert


def _list_of(item: Converter) -> Converter:
    def convert(node: yaml.Node, key: str, ctx: _Ctx) -> tuple[Any, ...]:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return ()
        if not isinstance(node, yaml.SequenceNode):
            raise ctx.error(node, key, f"expected a list, got a {_shape(node)}")
        return tuple(item(child, f"{key}[{i}]", ctx) for i, child in enumerate(node.value))

    return convert


def _sync_path(node: yaml.Node, key: str, ctx: _Ctx) -> str:
    path = str(_abs_path(node, key, ctx))
    if any(part in (".", "..") for part in path.split("/")):
        raise ctx.error(node, key, f"{path!r} contains '.' or '..'")
    return path


def _pattern(node: yaml.Node, key: str, ctx: _Ctx) -> str:
    value = _nonempty(node, key, ctx)
    try:
        Rule(value)
    except PatternError as exc:
        raise ctx.error(node, key, str(exc)) from exc
    return value


Schema = dict[str, tuple[Converter, Any]]

PEER_SCHEMA: Schema = {
    "host": (_nonempty, REQUIRED),
    "port": (_ranged(_int, 1, 65535), 22),
    "user": (_nonempty, "root"),
    "identity": (_existing_file, Path("/etc/bmsync/id_ed25519")),
    "known_hosts": (_existing_file, Path("/etc/bmsync/known_hosts")),
    "agent_command": (_nonempty, "bmsync agent"),
    "connect_timeout_s": (_ranged(_float, 0.1, 600), 10.0),
    "keepalive_interval_s": (_ranged(_float, 1, 3600), 15.0),
    "reconnect_min_s": (_ranged(_float, 0.01, 600), 0.5),
    "reconnect_max_s": (_ranged(_float, 0.01, 3600), 30.0),
}
SYNC_SCHEMA: Schema = {
    "preset": (_choice(*PRESETS), "bluemind"),
    "paths": (_list_of(_sync_path), ()),
    "exclude": (_list_of(_pattern), ()),
    "root": (_existing_dir, Path("/")),
    "batch_window_ms": (_ranged(_int, 0, 60_000), 10),
    "max_delay_ms": (_ranged(_int, 1, 600_000), 1000),
    "delete_brake_count": (_ranged(_int, 1, 10**9), 100),
    "delete_brake_share": (_ranged(_float, 0.0, 1.0), 0.10),
    "delete_brake_window_s": (_ranged(_float, 0.0, 86_400), 60.0),
    "delta_cache_mb": (_ranged(_int, 0, 1 << 20), 256),
    "queue_limit": (_ranged(_int, 1, 10**8), 50_000),
    "max_entries": (_ranged(_int, 1, 10**9), MAX_ENTRIES),
}


VIP_SCHEMA: Schema = {
    "address": (_ipv4, REQUIRED),
    "interface": (_interface, REQUIRED),
    "check_interval_s": (_ranged(_float, 0.5, 3600), 5.0),
}


def _peer(node: yaml.Node, key: str, ctx: _Ctx) -> PeerConfig:
    peer = PeerConfig(**_section(node, key, PEER_SCHEMA, ctx))
    _usable_key(peer.identity, _node_at(node, "identity") or node, f"{key}.identity", ctx)
    return peer


def _usable_key(path: Path, node: yaml.Node, key: str, ctx: _Ctx) -> None:
    """The daemon runs unattended: its key must load without a passphrase."""
    try:
        with path.open("rb") as file:
            data = file.read(KEY_READ_BYTES)
    except OSError as exc:
        raise ctx.error(node, key, f"cannot read {path}: {exc.strerror or exc}") from exc
    check = check_private_key(data)
    new_key = f"ssh-keygen -t ed25519 -N '' -f {path} (and its .pub in the peer's authorized_keys)"
    if check.state is KeyState.ENCRYPTED:
        raise ctx.error(
            node,
            key,
            f"{path} is protected by a passphrase ({check.detail}), which nobody is there "
            f"to type when the daemon connects; remove it with ssh-keygen -p -N '' -f {path} "
            f"(it asks for the current one), or make a new key: {new_key}",
        )
    if check.state is KeyState.NOT_A_KEY:
        raise ctx.error(
            node,
            key,
            f"{path} is not an SSH private key ({check.detail}); name the file ssh-keygen "
            f"wrote (not the .pub), or make one: {new_key}",
        )


HA_SCHEMA: Schema = {
    "vip": (lambda n, k, c: VipConfig(**_section(n, k, VIP_SCHEMA, c)), None),
}


def _section(node: yaml.Node, prefix: str, schema: Schema, ctx: _Ctx) -> dict[str, Any]:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(node, prefix or "top level", f"expected a mapping, got a {_shape(node)}")
    seen: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = _scalar(key_node, prefix or "top level", ctx)
        where = f"{prefix}.{key}" if prefix else str(key)
        if not isinstance(key, str) or key not in schema:
            hint = difflib.get_close_matches(str(key), schema, n=1)
            suffix = (
                f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {', '.join(schema)}"
            )
            raise ctx.error(key_node, where, f"unknown key{suffix}")
        if key in seen:
            raise ctx.error(key_node, where, "given twice")
        seen[key] = value_node
    out: dict[str, Any] = {}
    for key, (convert, default) in schema.items():
        where = f"{prefix}.{key}" if prefix else key
        if key in seen:
            out[key] = convert(seen[key], where, ctx)
        elif default is REQUIRED:
            raise ctx.error(node, where, "missing; this key is required")
        elif convert in (_existing_file, _existing_dir) and not Path(default).exists():
            raise ctx.error(node, where, f"not set, and the default {default} does not exist")
        else:
            out[key] = default
    return out


TOP_SCHEMA: Schema = {
    "node": (_node_id, REQUIRED),
    "state_dir": (_abs_path, Path("/var/lib/bmsync")),
    "control_socket": (_abs_path, Path("/run/bmsync/control.sock")),
    "peer": (_peer, None),
    "sync": (lambda n, k, c: SyncConfig(**_section(n, k, SYNC_SCHEMA, c)), None),
    "ha": (lambda n, k, c: HaConfig(**_section(n, k, HA_SCHEMA, c)), HaConfig()),
}


def load(path: Path, *, receiver: bool = False) -> Config:
    """Read and check ``path``; ``receiver``: as the agent does, without
    the ``peer`` section (``Config.peer`` is then None)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file; write one (see README) or pass -c FILE") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    return parse(text, path, receiver=receiver)


def _unread(node: yaml.Node, key: str, ctx: _Ctx) -> None:
    return None


def parse(text: str, source: Path, *, receiver: bool = False) -> Config:
    ctx = _Ctx(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{line}: not valid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if root is None:
        raise ConfigError(f"{source}: the file is empty; at least 'node:' is required")
    schema = {**TOP_SCHEMA, "peer": (_unread, None)} if receiver else TOP_SCHEMA
    fields = _section(root, "", schema, ctx)
    if fields["sync"] is None:
        empty = yaml.MappingNode("tag:yaml.org,2002:map", [], root.start_mark, root.end_mark)
        fields["sync"] = SyncConfig(**_section(empty, "sync", SYNC_SCHEMA, ctx))
    conf = Config(source=source, **fields)
    if conf.sync.root == Path("/") and "/" in conf.sync.paths:
        where = _node_at(root, "sync", "paths") or root
        raise ctx.error(
            where,
            "sync.paths",
            "'/' with root '/' would sync the whole system (/proc, /sys, /dev...); "
            "list the trees to sync instead",
        )
    return conf


def _node_at(node: yaml.Node, *keys: str) -> yaml.Node | None:
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return None
        found = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key]
        if not found:
            return None
        node = found[0]
    return node
