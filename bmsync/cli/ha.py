"""``bmsync ha ...``: the HA primitives, each a command an administrator
can run by hand."""

from __future__ import annotations

import argparse
import asyncio
import shlex

from bmsync.config.model import Config, VipConfig
from bmsync.core.errors import ConfigError, FencingError
from bmsync.ha.fence import fence as run_fence
from bmsync.ha.fencing import planned
from bmsync.ha.services import commands_of, run_step, shell_argv
from bmsync.ha.vip_move import down_plan, up_plan, vip_down, vip_up


def _vip(conf: Config) -> VipConfig:
    if conf.ha.vip is None:
        raise ConfigError(
            f"{conf.source}: no 'ha: vip:' section; say which address and interface "
            "(see README, Configuration)"
        )
    return conf.ha.vip


def _print_plan(plan: list[list[str]]) -> int:
    for argv in plan:
        print(shlex.join(argv))
    return 0


def vip_up_command(conf: Config, args: argparse.Namespace) -> int:
    vip = _vip(conf)
    if args.dry_run:
        return _print_plan(up_plan(vip))
    print(asyncio.run(vip_up(vip, force=args.force)))
    return 0


def vip_down_command(conf: Config, args: argparse.Namespace) -> int:
    vip = _vip(conf)
    if args.dry_run:
        return _print_plan(down_plan(vip))
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
        return _print_plan([shell_argv(command) for command in commands_of(services, step)])
    for ran in run_step(services, step):
        print(ran.describe(services.timeout_s))
    return 0
