"""``bmsync ha ...``: the HA primitives, each a command an administrator
can run by hand."""

from __future__ import annotations

import argparse
import asyncio
import shlex

import structlog

from bmsync.config.model import Config, StorageConfig, VipConfig
from bmsync.core.errors import ConfigError, FencingError
from bmsync.ha.actions import tell_daemon_fenced
from bmsync.ha.fence import fence as run_fence
from bmsync.ha.fencing import planned
from bmsync.ha.peer_mounts import ask_peer
from bmsync.ha.services import commands_of, run_step, shell_argv
from bmsync.ha.storage import (
    StorageTools,
    mount_plan_lines,
    mount_storage,
    unmount_plan_lines,
    unmount_storage,
)
from bmsync.ha.vip_move import down_plan, up_plan, vip_down, vip_up

log = structlog.get_logger("bmsync.ha")


def _vip(conf: Config) -> VipConfig:
    if conf.ha.vip is None:
        raise ConfigError(
            f"{conf.source}: no 'ha: vip:' section; say which address and interface "
            "(see README, Configuration)"
        )
    return conf.ha.vip


def print_plan(plan: list[list[str]]) -> int:
    for argv in plan:
        print(shlex.join(argv))
    return 0


def vip_up_command(conf: Config, args: argparse.Namespace) -> int:
    vip = _vip(conf)
    if args.dry_run:
        return print_plan(up_plan(vip))
    print(asyncio.run(vip_up(vip, force=args.force)))
    return 0


def vip_down_command(conf: Config, args: argparse.Namespace) -> int:
    vip = _vip(conf)
    if args.dry_run:
        return print_plan(down_plan(vip))
    print(asyncio.run(vip_down(vip)))
    return 0


def fence(conf: Config, args: argparse.Namespace) -> int:
    """Power the peer off through its BMC (or a fence agent) and confirm
    it is off; ``--test`` only reads its power state."""
    fencing = conf.ha.fencing
    if fencing is None:
        raise ConfigError(
            f"{conf.source}: no 'ha.fencing' section; say how this node powers its peer off "
            "(method, address, user, password_file: see README, 'bmsync ha fence')"
        )
    if args.dry_run:
        for line in planned(fencing, args.test):
            print(line)
        return 0
    outcome = run_fence(fencing, test=args.test)
    where = f"{fencing.address}:{fencing.port}"
    if not outcome.ok:
        raise FencingError(f"{outcome.message}; {outcome.advice}")
    if args.test:
        print(f"{outcome.message} (BMC {where}, user {fencing.user}: credentials accepted)")
    else:
        print(outcome.message)
        tell_daemon_fenced(conf)
    return 0


def services_start(conf: Config, args: argparse.Namespace) -> int:
    return _services(conf, args, "start")


def services_stop(conf: Config, args: argparse.Namespace) -> int:
    return _services(conf, args, "stop")


def services_check(conf: Config, args: argparse.Namespace) -> int:
    return _services(conf, args, "check")


def _services(conf: Config, args: argparse.Namespace, step: str) -> int:
    """Run the ``step`` commands of ha.services."""
    services = conf.ha.services
    if services is None:
        raise ConfigError(
            f"{conf.source}: no 'ha: services:' section; list the start and stop "
            "commands of what uses the shared data (see README, Configuration)"
        )
    if args.dry_run:
        return print_plan([shell_argv(command) for command in commands_of(services, step)])
    for ran in run_step(services, step):
        print(ran.describe(services.timeout_s))
    return 0


def _storage(conf: Config) -> tuple[StorageConfig, ...]:
    if not conf.ha.storage:
        raise ConfigError(
            f"{conf.source}: no 'ha: storage:' entries; list the devices and mount points "
            "of the shared storage (see README, Configuration)"
        )
    return conf.ha.storage


def storage_mount(conf: Config, args: argparse.Namespace) -> int:
    """Mount ha.storage here, unless the peer has any of it mounted."""
    entries = _storage(conf)
    if args.dry_run:
        host = None if conf.peer is None else conf.peer.host
        lines = mount_plan_lines(entries, host, StorageTools())
        for line in lines:
            print(line)
        return 10 if any(line.startswith("# refused") for line in lines) else 0
    asked = [str(e.device) for e in entries if not e.shared]
    peer = asyncio.run(ask_peer(conf, asked))
    mount_storage(entries, peer, args.peer_is_down, say=say_now)
    return 0


def storage_unmount(conf: Config, args: argparse.Namespace) -> int:
    """Unmount ha.storage here, stopping what holds it."""
    entries = _storage(conf)
    if args.dry_run:
        lines = unmount_plan_lines(entries, StorageTools())
        for line in lines:
            print(line)
        return 10 if any(line.startswith("# refused") for line in lines) else 0
    unmount_storage(entries, say=say_now)
    return 0


def say_now(line: str) -> None:
    print(line, flush=True)
