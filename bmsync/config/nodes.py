"""Reading a configuration's YAML node tree: typed values whose errors
name the file, the line and the key ("bmsync.yaml line 7: sync.paths_:
unknown key; did you mean 'paths'?"), and sections built into the model's
frozen classes, with the model's defaults for the keys not given."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bmsync.core.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Ctx:
    source: Path

    def error(self, node: yaml.Node, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source} line {node.start_mark.line + 1}: {key}: {message}")


Converter = Callable[[yaml.Node, str, Ctx], Any]


def scalar(node: yaml.Node, key: str, ctx: Ctx) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.error(node, key, f"expected a single value, got a {shape(node)}")
    try:
        return yaml.SafeLoader("").construct_object(node)
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        # unknown tags (!foo), impossible dates (2024-13-01), ...
        problem = getattr(exc, "problem", None) or str(exc)
        raise ctx.error(node, key, f"cannot read this value: {problem}") from exc


def shape(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    return "value"


def typed(kind: type[T], words: str) -> Callable[[yaml.Node, str, Ctx], T]:
    def convert(node: yaml.Node, key: str, ctx: Ctx) -> T:
        value = scalar(node, key, ctx)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ctx.error(node, key, f"expected {words}, got {value!r}")
        return value

    return convert


as_str = typed(str, "a string")
as_int = typed(int, "an integer")
as_float = typed(float, "a number")
as_bool = typed(bool, "true or false")


def ranged(convert: Converter, low: float, high: float) -> Converter:
    def check(node: yaml.Node, key: str, ctx: Ctx) -> Any:
        value = convert(node, key, ctx)
        if not low <= value <= high:
            raise ctx.error(node, key, f"{value} is out of range ({low} to {high})")
        return value

    return check


def nonempty(node: yaml.Node, key: str, ctx: Ctx) -> str:
    value = as_str(node, key, ctx)
    if not value.strip():
        raise ctx.error(node, key, "must not be empty")
    return value


def ipv4(node: yaml.Node, key: str, ctx: Ctx) -> str:
    value = as_str(node, key, ctx)
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as exc:
        raise ctx.error(node, key, f"{value!r} is not an IPv4 address") from exc


def interface(node: yaml.Node, key: str, ctx: Ctx) -> str:
    value = as_str(node, key, ctx)
    if not re.fullmatch(r"[A-Za-z0-9._@-]{1,15}", value):
        raise ctx.error(node, key, f"{value!r} is not a network interface name")
    return value


def abs_path(node: yaml.Node, key: str, ctx: Ctx) -> Path:
    value = as_str(node, key, ctx)
    if not value.startswith("/"):
        raise ctx.error(node, key, f"{value!r} is a relative path; give an absolute one")
    if "\0" in value:
        raise ctx.error(node, key, "path contains a NUL character")
    return Path(value)


def existing_file(node: yaml.Node, key: str, ctx: Ctx) -> Path:
    path = abs_path(node, key, ctx)
    if not path.exists():
        raise ctx.error(node, key, f"file {path} does not exist")
    if not path.is_file():
        raise ctx.error(node, key, f"{path} is not a regular file")
    return path


def existing_dir(node: yaml.Node, key: str, ctx: Ctx) -> Path:
    path = abs_path(node, key, ctx)
    if not path.exists():
        raise ctx.error(node, key, f"directory {path} does not exist")
    if not path.is_dir():
        raise ctx.error(node, key, f"{path} is not a directory")
    return path


def choice(*choices: str) -> Converter:
    def convert(node: yaml.Node, key: str, ctx: Ctx) -> str:
        value = as_str(node, key, ctx)
        if value not in choices:
            raise ctx.error(node, key, f"{value!r} is not one of: {', '.join(choices)}")
        return value

    return convert


def list_of(item: Converter) -> Converter:
    def convert(node: yaml.Node, key: str, ctx: Ctx) -> tuple[Any, ...]:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return ()
        if not isinstance(node, yaml.SequenceNode):
            raise ctx.error(node, key, f"expected a list, got a {shape(node)}")
        return tuple(item(child, f"{key}[{i}]", ctx) for i, child in enumerate(node.value))

    return convert


# key -> how its value is read; the defaults are the model's (config/model.py)
Schema = dict[str, Converter]


def section(
    node: yaml.Node, prefix: str, schema: Schema, ctx: Ctx, model: type[T], **given: Any
) -> T:
    """``model`` from the mapping ``node``: each key read by its converter,
    the others left to the model's defaults (checked like a given value
    where the default names a file or directory); ``given``: fields that do
    not come from the file."""
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(node, prefix or "top level", f"expected a mapping, got a {shape(node)}")
    seen: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = scalar(key_node, prefix or "top level", ctx)
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
        if convert in (existing_file, existing_dir) and not Path(default).exists():
            raise ctx.error(node, where, f"not set, and the default {default} does not exist")
    return model(**out)


_REQUIRED = object()


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return _REQUIRED


def node_at(node: yaml.Node, *keys: str) -> yaml.Node | None:
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return None
        found = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key]
        if not found:
            return None
        node = found[0]
    return node
