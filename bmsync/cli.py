"""The ``bmsync`` command line.

Exit codes (also in the README): 0 success, in sync; 1 ``verify`` found
differences, or ``config check`` found the configuration invalid; 2 bad
arguments or configuration; 3 the peer cannot be reached over SSH (network,
host key, authentication, agent missing); 4 protocol error; 5 the peer
refused the session; 6 some paths could not be applied; 7 this node's tree
could not be read; 70 internal error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from bmsync import __version__, config
from bmsync.errors import BmsyncError, ConfigError, UsageError
from bmsync.log import configure

EXIT_DIFFERENT = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bmsync", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"bmsync {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=config.DEFAULT_PATH,
        help=f"configuration file (default {config.DEFAULT_PATH})",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="warning",
        help="log events at this level and above to stderr",
    )
    parser.add_argument("--log-format", choices=["console", "json"], default="console")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    resync = commands.add_parser("resync", help="make the peer's tree identical to this one")
    resync.add_argument(
        "--dry-run", action="store_true", help="list what would change, change nothing"
    )
    resync.add_argument("--json", action="store_true", help="print a JSON report")

    verify = commands.add_parser("verify", help="compare with the peer by digest; change nothing")
    verify.add_argument("--json", action="store_true", help="print a JSON report")

    commands.add_parser(
        "agent", help="speak the sync protocol on stdin/stdout (the peer's forced command)"
    )

    commands.add_parser("run", help="the real-time sync daemon (systemd starts it)")
    status = commands.add_parser("status", help="what the daemon is doing (exit 3 if it is down)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    pause = commands.add_parser("pause", help="stop sending changes until 'bmsync resume'")
    pause.add_argument("--reason", default="", help="recorded and shown by 'bmsync status'")
    resume = commands.add_parser("resume", help="send changes again (after pause or a brake)")
    resume.add_argument(
        "--discard",
        action="store_true",
        help="after a delete storm: restore the deleted files from the peer instead",
    )
    resume.add_argument(
        "--force",
        action="store_true",
        help="clear a split-brain suspension without evidence (needs --reason; recorded)",
    )
    resume.add_argument("--reason", default="", help="why --force is safe (recorded)")
    commands.add_parser(
        "promote", help="make this node the active one, at an epoch above every one seen"
    )
    commands.add_parser("demote", help="make this node passive (it then only receives)")

    conf = commands.add_parser("config", help="configuration commands")
    conf_cmds = conf.add_subparsers(
        dest="config_command", metavar="SUBCOMMAND", parser_class=_Parser
    )
    conf_cmds.required = True
    check = conf_cmds.add_parser("check", help="validate and print the effective sync rules")
    check.add_argument("--json", action="store_true", help="print the rules as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    configure(args.log_level, args.log_format, environ=os.environ)
    try:
        if args.command == "config":
            return _config_check(args)
        # Imports per command: the agent is started for every SSH session and
        # needs neither asyncssh nor the daemon, so it does not load them.
        if args.command == "agent":
            from bmsync.agent import run_stdio

            return run_stdio(args.config)
        conf = config.load(args.config)
        if args.command in ("resync", "verify"):
            from bmsync import daemon_cli, sync_cli

            if args.command == "verify":
                return asyncio.run(sync_cli.cmd_verify(conf, args))
            if not args.dry_run and (answer := daemon_cli.resync_via_daemon(conf)) is not None:
                return sync_cli.print_daemon_resync(answer, args.json)
            return asyncio.run(sync_cli.cmd_resync(conf, args))
        from bmsync import daemon_cli

        if args.command == "run":
            return daemon_cli.cmd_run(conf)
        if args.command == "status":
            return daemon_cli.cmd_status(conf, args)
        if args.command == "pause":
            return daemon_cli.cmd_pause(conf, args)
        if args.command == "resume":
            return daemon_cli.cmd_resume(conf, args)
        if args.command in ("promote", "demote"):
            return daemon_cli.cmd_role(conf, args.command)
        raise UsageError(f"unknown command {args.command!r}")
    except BmsyncError as exc:
        print(f"bmsync: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bmsync: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader (head, grep -q) went away; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# -- config check --------------------------------------------------------------


def _config_check(args: argparse.Namespace) -> int:
    try:
        conf = config.load(args.config)
    except ConfigError as exc:
        print(f"bmsync: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_DIFFERENT
    paths = conf.sync_paths()
    rules = conf.exclude_rules()
    if args.json:
        print(
            json.dumps(
                {
                    "config": str(conf.source),
                    "node": conf.node,
                    "root": str(conf.sync.root),
                    "state_dir": str(conf.state_dir),
                    "peer": None
                    if conf.peer is None
                    else f"{conf.peer.user}@{conf.peer.host}:{conf.peer.port}",
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
    print(f"\nsync paths (preset {conf.sync.preset!r}, then sync.paths):")
    for item in paths:
        print(f"  {item.path:<56} {item.reason}")
    print("\nexcludes (last match wins; '!pattern' re-includes):")
    for rule in rules:
        print(f"  {rule.pattern:<56} {rule.reason}")
    return 0
