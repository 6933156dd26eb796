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

import dataclasses
import difflib
import ipaddress
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bmsync.config.model import (
    Config,
    FencingConfig,
    HaConfig,
    PeerConfig,
    SyncConfig,
    VipConfig,
)
from bmsync.config.presets import PRESETS
from bmsync.core.errors import ConfigError
from bmsync.core.excludes import PatternError, Rule
from bmsync.core.sshkey import KeyState, check_private_key

# A private key file is a few KiB; more is not a key (only this much is read).
KEY_READ_BYTES = 1 << 20
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


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


# key -> how its value is read; the defaults are the model's (config/model.py)
Schema = dict[str, Converter]

PEER_SCHEMA: Schema = {
    "host": _nonempty,
    "port": _ranged(_int, 1, 65535),
    "user": _nonempty,
    "identity": _existing_file,
    "known_hosts": _existing_file,
    "agent_command": _nonempty,
    "connect_timeout_s": _ranged(_float, 0.1, 600),
    "keepalive_interval_s": _ranged(_float, 1, 3600),
    "reconnect_min_s": _ranged(_float, 0.01, 600),
    "reconnect_max_s": _ranged(_float, 0.01, 3600),
}
SYNC_SCHEMA: Schema = {
    "preset": _choice(*PRESETS),
    "paths": _list_of(_sync_path),
    "exclude": _list_of(_pattern),
    "root": _existing_dir,
    "batch_window_ms": _ranged(_int, 0, 60_000),
    "max_delay_ms": _ranged(_int, 1, 600_000),
    "delete_brake_count": _ranged(_int, 1, 10**9),
    "delete_brake_share": _ranged(_float, 0.0, 1.0),
    "delete_brake_window_s": _ranged(_float, 0.0, 86_400),
    "delta_cache_mb": _ranged(_int, 0, 1 << 20),
    "queue_limit": _ranged(_int, 1, 10**8),
    "max_entries": _ranged(_int, 1, 10**9),
}
VIP_SCHEMA: Schema = {
    "address": _ipv4,
    "interface": _interface,
    "check_interval_s": _ranged(_float, 0.5, 3600),
}


def _peer(node: yaml.Node, key: str, ctx: _Ctx) -> PeerConfig:
    peer = _section(node, key, PEER_SCHEMA, ctx, PeerConfig)
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


def _vip(node: yaml.Node, key: str, ctx: _Ctx) -> VipConfig:
    return _section(node, key, VIP_SCHEMA, ctx, VipConfig)


def _sync(node: yaml.Node, key: str, ctx: _Ctx) -> SyncConfig:
    return _section(node, key, SYNC_SCHEMA, ctx, SyncConfig)


def _ha(node: yaml.Node, key: str, ctx: _Ctx) -> HaConfig:
    return _section(node, key, HA_SCHEMA, ctx, HaConfig)


# -- ha.fencing (issue 13) ---------------------------------------------------

_FENCE_AGENT = re.compile(r"fence_[a-z0-9_]+")
# a BMC's host name or address; never starting with '-' (it goes on a command line)
_BMC_ADDRESS = re.compile(r"[A-Za-z0-9_.:\[\]][A-Za-z0-9_.:\[\]-]{0,252}")


def _bmc_address(node: yaml.Node, key: str, ctx: _Ctx) -> str:
    value = _str(node, key, ctx)
    if not _BMC_ADDRESS.fullmatch(value):
        raise ctx.error(node, key, f"{value!r} is not a host name or an IP address")
    return value


def _one_line(node: yaml.Node, key: str, ctx: _Ctx) -> str:
    value = _nonempty(node, key, ctx)
    if any(c in value for c in "\n\r\0") or value.startswith("-"):
        raise ctx.error(node, key, f"{value!r}: one line, not starting with '-'")
    return value


def _secret_file(node: yaml.Node, key: str, ctx: _Ctx) -> Path:
    """A file only root may read: a regular file, no access for group or
    others."""
    path = _abs_path(node, key, ctx)
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise ctx.error(
            node,
            key,
            f"file {path} does not exist; write the password in it (one line), "
            f"then: chmod 600 {path}",
        ) from exc
    except OSError as exc:
        raise ctx.error(node, key, f"cannot read {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ctx.error(node, key, f"{path} is not a regular file")
    if info.st_mode & 0o066:
        raise ctx.error(
            node,
            key,
            f"{path} is readable or writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}",
        )
    if not os.access(path, os.R_OK):
        raise ctx.error(node, key, f"{path} is not readable by this user (uid {os.getuid()})")
    return path


def _fence_agent(node: yaml.Node, key: str, ctx: _Ctx) -> str:
    value = _str(node, key, ctx)
    if not _FENCE_AGENT.fullmatch(value):
        raise ctx.error(
            node, key, f"{value!r} is not a fence agent's name (fence_[a-z0-9_]+, as fence_idrac)"
        )
    return value


FENCING_SCHEMA: Schema = {
    "method": _choice("ipmi", "fence-agent"),
    "tool": _choice("ipmitool", "ipmipower"),
    "address": _bmc_address,
    "port": _ranged(_int, 1, 65535),
    "user": _one_line,
    "password_file": _secret_file,
    "interface": _choice("lanplus", "lan"),
    "cipher_suite": _ranged(_int, 0, 17),
    "timeout_s": _ranged(_float, 1, 600),
    "retries": _ranged(_int, 1, 5),
    "agent": _fence_agent,
}


def _fencing(node: yaml.Node, key: str, ctx: _Ctx) -> FencingConfig:
    fencing = _section(node, key, FENCING_SCHEMA, ctx, FencingConfig)
    if fencing.method == "fence-agent" and not fencing.agent:
        raise ctx.error(
            node,
            f"{key}.agent",
            "missing; method fence-agent needs the agent to run (as agent: fence_idrac)",
        )
    if fencing.method != "fence-agent" and fencing.agent:
        raise ctx.error(
            _node_at(node, "agent") or node,
            f"{key}.agent",
            f"only read with method fence-agent (method is {fencing.method!r})",
        )
    return fencing


# -- end of ha.fencing -------------------------------------------------------

HA_SCHEMA: Schema = {
    "vip": _vip,
    # ha.fencing (issue 13)
    "fencing": _fencing,
}


def _section(
    node: yaml.Node, prefix: str, schema: Schema, ctx: _Ctx, model: type[T], **given: Any
) -> T:
    """``model`` from the mapping ``node``: each key read by its converter,
    the others left to the model's defaults (checked like a given value
    where the default names a file or directory); ``given``: fields that do
    not come from the file."""
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
    defaults = {f.name: f for f in dataclasses.fields(model)}  # type: ignore[arg-type]
    out: dict[str, Any] = dict(given)
    for key, convert in schema.items():
        where = f"{prefix}.{key}" if prefix else key
        if key in seen:
            out[key] = convert(seen[key], where, ctx)
            continue
        default = _default(defaults[key])
        if default is _REQUIRED:
            raise ctx.error(node, where, "missing; this key is required")
        if convert in (_existing_file, _existing_dir) and not Path(default).exists():
            raise ctx.error(node, where, f"not set, and the default {default} does not exist")
    return model(**out)


_REQUIRED = object()


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return _REQUIRED


TOP_SCHEMA: Schema = {
    "node": _node_id,
    "state_dir": _abs_path,
    "control_socket": _abs_path,
    "peer": _peer,
    "sync": _sync,
    "ha": _ha,
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
    schema = {**TOP_SCHEMA, "peer": _unread} if receiver else TOP_SCHEMA
    if _node_at(root, "sync") is None and isinstance(root, yaml.MappingNode):
        # no sync section: its defaults are checked as if it were empty
        empty = yaml.MappingNode("tag:yaml.org,2002:map", [], root.start_mark, root.end_mark)
        _sync(empty, "sync", ctx)
    conf = _section(root, "", schema, ctx, Config, source=source)
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
