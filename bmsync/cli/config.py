"""``bmsync config check``: validate the configuration file and print the
effective sync rules."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bmsync.config.parse import load as load_config
from bmsync.core.errors import ConfigError

EXIT_INVALID = 1


def check(config_path: Path, args: argparse.Namespace) -> int:
    try:
        conf = load_config(config_path)
    except ConfigError as exc:
        print(f"bmsync: invalid configuration: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"config": str(config_path), "valid": False, "error": str(exc)}))
        return EXIT_INVALID
    paths = conf.sync_paths()
    rules = conf.exclude_rules()
    vip = conf.ha.vip
    if args.json:
        print(
            json.dumps(
                {
                    "config": str(conf.source),
                    "valid": True,
                    "node": conf.node,
                    "root": str(conf.sync.root),
                    "state_dir": str(conf.state_dir),
                    "peer": None
                    if conf.peer is None
                    else f"{conf.peer.user}@{conf.peer.host}:{conf.peer.port}",
                    "ha": None
                    if vip is None
                    else {
                        "vip": {
                            "address": vip.address,
                            "interface": vip.interface,
                            "check_interval_s": vip.check_interval_s,
                        }
                    },
                    "paths": [{"path": p.path, "reason": p.reason} for p in paths],
                    "exclude": [{"pattern": r.pattern, "reason": r.reason} for r in rules],
                },
                indent=2,
            )
        )
        return 0
    print(f"{conf.source}: valid")
    print(f"node {conf.node}, root {conf.sync.root}, state_dir {conf.state_dir}")
    if conf.peer is None:
        print("peer: none (this node can only receive)")
    else:
        p = conf.peer
        print(f"peer: {p.user}@{p.host}:{p.port} key {p.identity}, known_hosts {p.known_hosts}")
        print(f"      runs '{p.agent_command}'")
    if vip is None:
        print("ha: none (no VIP watched by the split-brain guard)")
    else:
        print(
            f"ha: VIP {vip.address} on {vip.interface}, "
            f"checked every {vip.check_interval_s:g} s by the split-brain guard"
        )
    print(f"\nsync paths (preset {conf.sync.preset!r}, then sync.paths):")
    for item in paths:
        print(f"  {item.path:<56} {item.reason}")
    print("\nexcludes (last match wins; '!pattern' re-includes):")
    for rule in rules:
        print(f"  {rule.pattern:<56} {rule.reason}")
    return 0
