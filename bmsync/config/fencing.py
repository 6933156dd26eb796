"""The ``ha.fencing`` section: how this node powers its peer off (IPMI
with ipmitool or ipmipower, or a Debian fence agent). The password stays in
a file only root may read; nothing here ever goes on a command line
unchecked."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import yaml

from bmsync.config.model import FencingConfig
from bmsync.config.nodes import (
    Ctx,
    Schema,
    abs_path,
    as_float,
    as_int,
    as_str,
    choice,
    node_at,
    nonempty,
    ranged,
    section,
)

_FENCE_AGENT = re.compile(r"fence_[a-z0-9_]+")
# a BMC's host name or address; never starting with '-' (it goes on a command line)
_BMC_ADDRESS = re.compile(r"[A-Za-z0-9_.:\[\]][A-Za-z0-9_.:\[\]-]{0,252}")


def _bmc_address(node: yaml.Node, key: str, ctx: Ctx) -> str:
    value = as_str(node, key, ctx)
    if not _BMC_ADDRESS.fullmatch(value):
        raise ctx.error(node, key, f"{value!r} is not a host name or an IP address")
    return value


def _one_line(node: yaml.Node, key: str, ctx: Ctx) -> str:
    value = nonempty(node, key, ctx)
    if any(c in value for c in "\n\r\0") or value.startswith("-"):
        raise ctx.error(node, key, f"{value!r}: one line, not starting with '-'")
    return value


def _secret_file(node: yaml.Node, key: str, ctx: Ctx) -> Path:
    """A file only root may read: a regular file, no access for group or
    others."""
    path = abs_path(node, key, ctx)
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


def _fence_agent(node: yaml.Node, key: str, ctx: Ctx) -> str:
    value = as_str(node, key, ctx)
    if not _FENCE_AGENT.fullmatch(value):
        raise ctx.error(
            node, key, f"{value!r} is not a fence agent's name (fence_[a-z0-9_]+, as fence_idrac)"
        )
    return value


FENCING_SCHEMA: Schema = {
    "method": choice("ipmi", "fence-agent"),
    "tool": choice("ipmitool", "ipmipower"),
    "address": _bmc_address,
    "port": ranged(as_int, 1, 65535),
    "user": _one_line,
    "password_file": _secret_file,
    "interface": choice("lanplus", "lan"),
    "cipher_suite": ranged(as_int, 0, 17),
    "timeout_s": ranged(as_float, 1, 600),
    "retries": ranged(as_int, 1, 5),
    "agent": _fence_agent,
}


def fencing_section(node: yaml.Node, key: str, ctx: Ctx) -> FencingConfig:
    fencing = section(node, key, FENCING_SCHEMA, ctx, FencingConfig)
    if fencing.method == "fence-agent" and not fencing.agent:
        raise ctx.error(
            node,
            f"{key}.agent",
            "missing; method fence-agent needs the agent to run (as agent: fence_idrac)",
        )
    if fencing.method != "fence-agent" and fencing.agent:
        raise ctx.error(
            node_at(node, "agent") or node,
            f"{key}.agent",
            f"only read with method fence-agent (method is {fencing.method!r})",
        )
    return fencing
