"""The ``bmsync`` command line: the argument parser (whose help lists the
exit codes, as the README does), the logging set-up, and the dispatch to
each command; ``config check`` is here."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from bmsync import __version__
from bmsync.config.model import DEFAULT_PATH
from bmsync.config.parse import load as load_config
from bmsync.core.errors import BmsyncError, ConfigError, UsageError
from bmsync.service.logs import configure

EXIT_DIFFERENT = 1

DESCRIPTION = """\
Keep the passive node of a two-node BlueMind HA pair configured like the
active one. On the active node, 'bmsync run' (the daemon, started by systemd)
sends every change of /etc and the other sync paths over SSH to
'bmsync agent' on the passive node, which applies each file atomically with
its owner, mode, times, ACLs and xattrs. 'bmsync resync' and 'bmsync verify'
do a full pass by hand."""

EPILOG = """\
options -c, --log-level and --log-format may also follow the command.

exit codes:
  0   success; the peer is in sync
  1   verify found differences, or config check found the file invalid
  2   bad arguments or configuration
  3   the peer cannot be reached over SSH (network, host key, key refused,
      bmsync missing on the peer)
  4   protocol error
  5   the peer refused the session (another sender, version, roles, epochs)
  6   some paths could not be applied (each is listed)
  7   this node's tree could not be read
  8   this node is passive ('bmsync promote' first), stale or suspended, or
      its role.json is damaged; promote past the highest epoch, or
      reset-epoch on an active node
  9   held back: sync is paused, or the resync would go past the
      delete-storm brake (nothing sent; --allow-deletes or 'bmsync resume')
  70  internal error
promote, demote, pause and resume exit 1 when they change nothing.
'bmsync status': 0 the daemon runs and syncs, 1 it runs but does not sync
(paused, disconnected, suspended, degraded), 3 no daemon answers.
"""

LOG_LEVELS = ["debug", "info", "warning", "error"]
LOG_FORMATS = ["console", "json"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _global_options(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """-c, --log-level and --log-format. On the top-level parser with their
    defaults; on each command with argparse.SUPPRESS, so that a value given
    before the command is kept when the command does not repeat it."""
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        default=defaults.get("config", argparse.SUPPRESS),
        help=f"configuration file (default {DEFAULT_PATH})",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=defaults.get("log_level", argparse.SUPPRESS),
        help="log events at this level and above to stderr (default warning)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=defaults.get("log_format", argparse.SUPPRESS),
        help="log lines as key=value text (console, the default) or JSON objects",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bmsync",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"bmsync {__version__}",
        help="print bmsync's version and exit",
    )
    _global_options(
        parser,
        {"config": DEFAULT_PATH, "log_level": "warning", "log_format": "console"},
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser, help="one of:"
    )
    commands.required = True

    def command(name: str, what: str, parent: Any = commands) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, help=what, description=what)
        _global_options(sub, {})
        return sub

    resync = command("resync", "make the peer's tree identical to this one")
    resync.add_argument(
        "--dry-run", action="store_true", help="list what would change, change nothing"
    )
    resync.add_argument("--json", action="store_true", help="print a JSON report")
    resync.add_argument(
        "--allow-deletes",
        action="store_true",
        help="go past the delete-storm brake: delete on the peer what is gone here",
    )

    verify = command("verify", "compare with the peer by digest; change nothing")
    verify.add_argument("--json", action="store_true", help="print a JSON report")

    command("agent", "speak the sync protocol on stdin/stdout (the peer's forced command)")
    command("run", "the real-time sync daemon (systemd starts it)")
    status = command("status", "what the daemon is doing (exit 3 if it is down)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    pause = command("pause", "stop sending changes until 'bmsync resume'")
    pause.add_argument("--reason", default="", help="recorded and shown by 'bmsync status'")
    resume = command("resume", "send changes again (after pause or a brake)")
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
    command("promote", "make this node the active one, at an epoch above every one seen")
    command("demote", "make this node passive (it then only receives)")
    reset = command(
        "reset-epoch",
        "passive node only: lower the highest epoch seen here, raised by a sender "
        "with a leaked key (replace the key first)",
    )
    reset.add_argument(
        "--to",
        type=int,
        required=True,
        metavar="EPOCH",
        help="the epoch of the last promotion you trust",
    )
    reset.add_argument("--reason", required=True, help="why (logged, kept in role.json)")

    conf = command("config", "check the configuration file")
    conf_cmds = conf.add_subparsers(
        dest="config_command", metavar="SUBCOMMAND", parser_class=_Parser, help="one of:"
    )
    conf_cmds.required = True
    check = command(
        "check", "validate the file and print the effective sync rules", parent=conf_cmds
    )
    check.add_argument("--json", action="store_true", help="print the result and the rules as JSON")
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
            from bmsync.agent.stdio import run_stdio

            return run_stdio(args.config)
        conf = load_config(args.config)
        if args.command in ("resync", "verify"):
            from bmsync.cli import daemon as daemon_cli
            from bmsync.cli import sync as sync_cli

            if args.command == "verify":
                return asyncio.run(sync_cli.cmd_verify(conf, args))
            if (
                not args.dry_run
                and (answer := daemon_cli.resync_via_daemon(conf, args.allow_deletes)) is not None
            ):
                return sync_cli.print_daemon_resync(answer, args.json)
            return asyncio.run(sync_cli.cmd_resync(conf, args))
        from bmsync.cli import daemon as daemon_cli

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
        if args.command == "reset-epoch":
            return daemon_cli.cmd_reset_epoch(conf, args.to, args.reason)
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
        conf = load_config(args.config)
    except ConfigError as exc:
        print(f"bmsync: invalid configuration: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"config": str(args.config), "valid": False, "error": str(exc)}))
        return EXIT_DIFFERENT
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
