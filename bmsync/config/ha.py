"""The ``ha:`` section: the floating IP, the shared storage (mounted on
the active node only; cyrus never on a network filesystem) and the
services that use it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bmsync.config.fencing import fencing_section
from bmsync.config.model import HaConfig, ServicesConfig, StorageConfig, VipConfig
from bmsync.config.nodes import (
    Ctx,
    Schema,
    abs_path,
    as_bool,
    as_float,
    as_int,
    as_str,
    interface,
    ipv4,
    list_of,
    node_at,
    nonempty,
    ranged,
    scalar,
    section,
)
from bmsync.core.storage import CLUSTER_FSTYPES, cyrus_path_of, is_network_fstype

_FSTYPE = re.compile(r"[a-z0-9][a-z0-9._+-]{0,63}")
VIP_SCHEMA: Schema = {
    "address": ipv4,
    "interface": interface,
    "check_interval_s": ranged(as_float, 0.5, 3600),
    "prefix": ranged(as_int, 1, 32),
    "arp_count": ranged(as_int, 1, 100),
    "arp_interval_ms": ranged(as_int, 10, 10_000),
}


def _mount_point(node: yaml.Node, key: str, ctx: Ctx) -> Path:
    path = abs_path(node, key, ctx)
    given = str(scalar(node, key, ctx))
    if any(part in (".", "..") for part in given.split("/")):
        # as written: Path drops a '.' that mount(8) would be given
        raise ctx.error(node, key, f"{given!r} contains '.' or '..'")
    if path == Path("/"):
        raise ctx.error(node, key, "'/' is the root filesystem; name the directory to mount on")
    return path


def _fstype(node: yaml.Node, key: str, ctx: Ctx) -> str:
    value = as_str(node, key, ctx)
    if not _FSTYPE.fullmatch(value):
        raise ctx.error(
            node,
            key,
            f"{value!r} is not a filesystem type as mount(8) takes it "
            "(lowercase letters, digits, '.', '_', '+', '-')",
        )
    return value


def _mount_option(node: yaml.Node, key: str, ctx: Ctx) -> str:
    value = nonempty(node, key, ctx)
    if "," in value or any(c.isspace() for c in value):
        raise ctx.error(node, key, f"{value!r}: one option per item (no ',' nor spaces)")
    return value


def _commands(node: yaml.Node, key: str, ctx: Ctx) -> tuple[str, ...]:
    commands: tuple[str, ...] = list_of(nonempty)(node, key, ctx)
    if not commands:
        raise ctx.error(node, key, "must list at least one command")
    return commands


STORAGE_SCHEMA: Schema = {
    "device": abs_path,
    "mount": _mount_point,
    "fstype": _fstype,
    "options": list_of(_mount_option),
    "fsck": as_bool,
    "shared": as_bool,
    "kill_grace_s": ranged(as_float, 0, 3600),
}
SERVICES_SCHEMA: Schema = {
    "start": _commands,
    "stop": _commands,
    "check": list_of(nonempty),
    "timeout_s": ranged(as_float, 1, 86_400),
}


def _vip(node: yaml.Node, key: str, ctx: Ctx) -> VipConfig:
    return section(node, key, VIP_SCHEMA, ctx, VipConfig)


def _storage_entry(node: yaml.Node, key: str, ctx: Ctx) -> StorageConfig:
    entry = section(node, key, STORAGE_SCHEMA, ctx, StorageConfig)
    cyrus = cyrus_path_of(entry.mount)
    if cyrus is not None and is_network_fstype(entry.fstype):
        raise ctx.error(
            node_at(node, "fstype") or node,
            f"{key}.fstype",
            f"{entry.fstype} for {entry.mount}: cyrus's data ({cyrus}) needs "
            "block storage (a local disk, a SAN or iSCSI LUN, DRBD), never NFS nor any "
            "network or FUSE filesystem (BlueMind HA guide)",
        )
    if entry.shared and entry.fstype not in CLUSTER_FSTYPES:
        raise ctx.error(
            node_at(node, "shared") or node,
            f"{key}.shared",
            f"true only for a cluster filesystem ({', '.join(sorted(CLUSTER_FSTYPES))}); "
            f"{entry.fstype} mounted on both nodes at once is corrupted",
        )
    return entry


def _storage(node: yaml.Node, key: str, ctx: Ctx) -> tuple[StorageConfig, ...]:
    """The entries in mount order: one entry per mount point, and a mount
    point under another only after it (else the later mount hides it).
    An error about two entries names the later one's line."""
    entries: tuple[StorageConfig, ...] = list_of(_storage_entry)(node, key, ctx)
    if not entries:
        return entries
    assert isinstance(node, yaml.SequenceNode)  # list_of read it
    lines = [(node_at(item, "mount") or item) for item in node.value]
    for later, entry in enumerate(entries):
        for earlier in range(later):
            first = entries[earlier].mount
            also = f"{key}[{earlier}], line {lines[earlier].start_mark.line + 1}"
            if entry.mount == first:
                raise ctx.error(
                    lines[later],
                    f"{key}[{later}].mount",
                    f"{entry.mount} is already the mount point of {also}; "
                    "one entry per mount point",
                )
            if first.is_relative_to(entry.mount):
                raise ctx.error(
                    lines[later],
                    f"{key}[{later}].mount",
                    f"{first} ({also}) is under {entry.mount} but listed before it: "
                    f"mounting {entry.mount} afterwards would hide it; "
                    f"list {entry.mount} first",
                )
    return entries


def _services(node: yaml.Node, key: str, ctx: Ctx) -> ServicesConfig:
    return section(node, key, SERVICES_SCHEMA, ctx, ServicesConfig)


def ha_section(node: yaml.Node, key: str, ctx: Ctx) -> HaConfig:
    return section(node, key, HA_SCHEMA, ctx, HaConfig)


HA_SCHEMA: Schema = {
    "vip": _vip,
    "storage": _storage,
    "services": _services,
    "fencing": fencing_section,
}
