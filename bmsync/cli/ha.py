"""``bmsync ha ...``: the HA primitives, each a command an administrator
can run by hand."""

from __future__ import annotations

import argparse
import asyncio
import shlex

from bmsync.config.model import Config, VipConfig
from bmsync.core.errors import ConfigError
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
