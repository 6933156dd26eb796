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

import re
from pathlib import Path

import yaml

from bmsync.config.ha import ha_section
from bmsync.config.model import Config, PeerConfig, SyncConfig
from bmsync.config.nodes import (
    Ctx,
    Schema,
    abs_path,
    as_float,
    as_int,
    as_str,
    choice,
    existing_dir,
    existing_file,
    list_of,
    node_at,
    nonempty,
    ranged,
    section,
)
from bmsync.config.presets import PRESETS
from bmsync.core.errors import ConfigError
from bmsync.core.excludes import PatternError, Rule
from bmsync.core.sshkey import KeyState, check_private_key

# A private key file is a few KiB; more is not a key (only this much is read).
KEY_READ_BYTES = 1 << 20
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _node_id(node: yaml.Node, key: str, ctx: Ctx) -> str:
    value = as_str(node, key, ctx)
    if not _NODE_ID.fullmatch(value):
        raise ctx.error(
            node, key, f"{value!r} is not a node id (letters, digits, '.', '_', '-'; 63 at most)"
        )
    return value


def _sync_path(node: yaml.Node, key: str, ctx: Ctx) -> str:
    path = str(abs_path(node, key, ctx))
    if any(part in (".", "..") for part in path.split("/")):
        raise ctx.error(node, key, f"{path!r} contains '.' or '..'")
    return path


def _pattern(node: yaml.Node, key: str, ctx: Ctx) -> str:
    value = nonempty(node, key, ctx)
    try:
        Rule(value)
    except PatternError as exc:
        raise ctx.error(node, key, str(exc)) from exc
    return value


PEER_SCHEMA: Schema = {
    "host": nonempty,
    "port": ranged(as_int, 1, 65535),
    "user": nonempty,
    "identity": existing_file,
    "known_hosts": existing_file,
    "agent_command": nonempty,
    "connect_timeout_s": ranged(as_float, 0.1, 600),
    "keepalive_interval_s": ranged(as_float, 1, 3600),
    "reconnect_min_s": ranged(as_float, 0.01, 600),
    "reconnect_max_s": ranged(as_float, 0.01, 3600),
}
SYNC_SCHEMA: Schema = {
    "preset": choice(*PRESETS),
    "paths": list_of(_sync_path),
    "exclude": list_of(_pattern),
    "root": existing_dir,
    "batch_window_ms": ranged(as_int, 0, 60_000),
    "max_delay_ms": ranged(as_int, 1, 600_000),
    "delete_brake_count": ranged(as_int, 1, 10**9),
    "delete_brake_share": ranged(as_float, 0.0, 1.0),
    "delete_brake_window_s": ranged(as_float, 0.0, 86_400),
    "delta_cache_mb": ranged(as_int, 0, 1 << 20),
    "queue_limit": ranged(as_int, 1, 10**8),
    "max_entries": ranged(as_int, 1, 10**9),
}


def _peer(node: yaml.Node, key: str, ctx: Ctx) -> PeerConfig:
    peer = section(node, key, PEER_SCHEMA, ctx, PeerConfig)
    _usable_key(peer.identity, node_at(node, "identity") or node, f"{key}.identity", ctx)
    return peer


def _usable_key(path: Path, node: yaml.Node, key: str, ctx: Ctx) -> None:
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


def _sync(node: yaml.Node, key: str, ctx: Ctx) -> SyncConfig:
    return section(node, key, SYNC_SCHEMA, ctx, SyncConfig)


TOP_SCHEMA: Schema = {
    "node": _node_id,
    "state_dir": abs_path,
    "control_socket": abs_path,
    "peer": _peer,
    "sync": _sync,
    "ha": ha_section,
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


def _unread(node: yaml.Node, key: str, ctx: Ctx) -> None:
    return None


def parse(text: str, source: Path, *, receiver: bool = False) -> Config:
    ctx = Ctx(source)
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
    schema = {**TOP_SCHEMA, "peer": _unread} if receiver else TOP_SCHEMA
    if node_at(root, "sync") is None and isinstance(root, yaml.MappingNode):
        # no sync section: its defaults are checked as if it were empty
        empty = yaml.MappingNode("tag:yaml.org,2002:map", [], root.start_mark, root.end_mark)
        _sync(empty, "sync", ctx)
    conf = section(root, "", schema, ctx, Config, source=source)
    if conf.sync.root == Path("/") and "/" in conf.sync.paths:
        where = node_at(root, "sync", "paths") or root
        raise ctx.error(
            where,
            "sync.paths",
            "'/' with root '/' would sync the whole system (/proc, /sys, /dev...); "
            "list the trees to sync instead",
        )
    return conf
