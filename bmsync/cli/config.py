"""``bmsync config check``: validate the configuration file and print the
effective sync rules."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from bmsync.config.model import FencingConfig, HaConfig
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
                    "ha": _ha_json(conf.ha),
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
    _print_ha(conf.ha)
    print(f"\nsync paths (preset {conf.sync.preset!r}, then sync.paths):")
    for item in paths:
        print(f"  {item.path:<56} {item.reason}")
    print("\nexcludes (last match wins; '!pattern' re-includes):")
    for rule in rules:
        print(f"  {rule.pattern:<56} {rule.reason}")
    return 0


def _ha_json(ha: HaConfig) -> dict[str, Any] | None:
    if ha == HaConfig():
        return None
    vip = ha.vip
    services = ha.services
    return {
        "vip": None
        if vip is None
        else {
            "address": vip.address,
            "prefix": vip.prefix,
            "interface": vip.interface,
            "check_interval_s": vip.check_interval_s,
            "arp_count": vip.arp_count,
            "arp_interval_ms": vip.arp_interval_ms,
        },
        "storage": [
            {
                "device": str(s.device),
                "mount": str(s.mount),
                "fstype": s.fstype,
                "options": list(s.options),
                "fsck": s.fsck,
                "shared": s.shared,
                "kill_grace_s": s.kill_grace_s,
            }
            for s in ha.storage
        ],
        "services": None
        if services is None
        else {
            "start": list(services.start),
            "stop": list(services.stop),
            "check": list(services.check),
            "timeout_s": services.timeout_s,
        },
        "fencing": None if ha.fencing is None else _fencing_json(ha.fencing),
    }


def _fencing_json(fencing: FencingConfig) -> dict[str, Any]:
    """The section as given; the password file's path, never its content."""
    shown = dataclasses.asdict(fencing)
    shown["password_file"] = str(fencing.password_file)
    return shown


def _fencing_line(fencing: FencingConfig) -> str:
    if fencing.method == "fence-agent":
        how = f"the fence agent {fencing.agent}"
    else:
        how = f"IPMI ({fencing.tool}, {fencing.interface}, cipher suite {fencing.cipher_suite})"
    return (
        f"    fencing: the peer's BMC {fencing.address}:{fencing.port}, user {fencing.user}, "
        f"password in {fencing.password_file}, through {how}; power off confirmed within "
        f"{fencing.timeout_s:g} s, {fencing.retries} retr{'y' if fencing.retries == 1 else 'ies'}"
    )


def _print_ha(ha: HaConfig) -> None:
    if ha == HaConfig():
        print("ha: none (no VIP watched by the split-brain guard)")
        return
    vip = ha.vip
    if vip is None:
        print("ha: no VIP (none watched by the split-brain guard)")
    else:
        print(
            f"ha: VIP {vip.address}/{vip.prefix} on {vip.interface}, "
            f"checked every {vip.check_interval_s:g} s by the split-brain guard; "
            f"'vip up' sends {vip.arp_count} gratuitous ARP{'' if vip.arp_count == 1 else 's'}"
            f" {vip.arp_interval_ms} ms apart"
        )
    if ha.storage:
        print("    storage (mounted in this order on the active node only, unmounted in reverse):")
        for number, s in enumerate(ha.storage, 1):
            options = ",".join(s.options) or "defaults"
            print(
                f"      {number}. {s.mount}: {s.device} {s.fstype}, options {options}, "
                f"fsck {'yes' if s.fsck else 'no'}, shared {'yes' if s.shared else 'no'}, "
                f"holders killed {s.kill_grace_s:g} s after SIGTERM"
            )
    else:
        print("    storage: none (nothing mounted on promotion)")
    services = ha.services
    if services is None:
        print("    services: none (no service step runs)")
    else:
        print(f"    services (each command within {services.timeout_s:g} s):")
        for step, commands in (
            ("start", services.start),
            ("stop", services.stop),
            ("check", services.check),
        ):
            shown = ", ".join(f"'{c}'" for c in commands) if commands else "none"
            print(f"      {step + ':':<6} {shown}")
    if ha.fencing is None:
        print("    fencing: none (this node cannot power its peer off)")
    else:
        print(_fencing_line(ha.fencing))
