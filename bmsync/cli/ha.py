"""``bmsync ha fence``: power the peer off through its BMC (or a fence
agent) and confirm it is off; ``--test`` only reads its power state,
``--dry-run`` prints the commands."""

from __future__ import annotations

import argparse

from bmsync.config.model import Config
from bmsync.core.errors import ConfigError, FencingError
from bmsync.ha.fence import fence as run_fence
from bmsync.ha.fencing import planned


def fence(conf: Config, args: argparse.Namespace) -> int:
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
