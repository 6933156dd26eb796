"""The ``bmsync`` command line: the argument parser, built from the
registry (its help lists the exit codes, as the README does), the logging
set-up, the dispatch to each command's handler, and the one place where an
error becomes an exit code. The commands themselves are in bmsync.cli.registry
and their handlers in one module per group."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from bmsync import __version__
from bmsync.cli.registry import COMMANDS, Command, Needs
from bmsync.config.model import DEFAULT_PATH
from bmsync.core.errors import BmsyncError, UsageError
from bmsync.service.logs import configure

# The namespace attribute where the parser leaves the command to run.
COMMAND = "bmsync_command"
# Killed by Ctrl-C (SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130

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
  10  an HA action was refused or failed: another host holds the VIP, a
      tool failed, or 'bmsync ha fence' did NOT fence the peer (or, with
      --test, could not read its power state): do not take over
  70  internal error
promote, demote, pause and resume exit 1 when they change nothing.
'bmsync status': 0 the daemon runs and syncs, 1 it runs but does not sync
(paused, disconnected, suspended, degraded), 3 no daemon answers.
"""

LOG_LEVELS = ["debug", "info", "warning", "error"]
LOG_FORMATS = ["console", "json"]


class BadArguments(UsageError):
    """What argparse rejects; its message names the command already."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise BadArguments(f"{self.prog}: {message} (see '{self.prog} --help')")


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


def build_parser(commands: tuple[Command, ...] = COMMANDS) -> argparse.ArgumentParser:
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
    _add_commands(parser, commands, dest="command", metavar="COMMAND")
    return parser


def _add_commands(
    parser: argparse.ArgumentParser, commands: tuple[Command, ...], dest: str, metavar: str
) -> None:
    """One sub-parser per command, each with the global options; a group's
    sub-commands below it (dest "config_command" for those of "config").
    Each command's parser leaves its record in the namespace, as COMMAND."""
    choices = parser.add_subparsers(
        dest=dest, metavar=metavar, parser_class=_Parser, help="one of:"
    )
    choices.required = True
    for command in commands:
        sub: argparse.ArgumentParser = choices.add_parser(
            command.name, help=command.help, description=command.help
        )
        _global_options(sub, {})
        if command.arguments is not None:
            command.arguments(sub)
        if command.subcommands:
            _add_commands(sub, command.subcommands, f"{command.name}_command", "SUBCOMMAND")
        else:
            sub.set_defaults(**{COMMAND: command})


def main(argv: Sequence[str] | None = None, commands: tuple[Command, ...] = COMMANDS) -> int:
    try:
        args = build_parser(commands).parse_args(argv)
        configure(args.log_level, args.log_format, environ=os.environ)
        return dispatch(getattr(args, COMMAND), args)
    except (BmsyncError, KeyboardInterrupt, BrokenPipeError) as exc:
        return exit_code(exc)


def dispatch(command: Command, args: argparse.Namespace) -> int:
    """Import the command's handler (only this one) and call it with what
    it needs."""
    handler = command.resolve()
    if command.needs is Needs.CONFIG:
        from bmsync.config.parse import load as load_config

        return handler(load_config(args.config), args)
    if command.needs is Needs.CONFIG_PATH:
        return handler(args.config, args)
    return handler(args)


def exit_code(exc: BmsyncError | KeyboardInterrupt | BrokenPipeError) -> int:
    """The one mapping of an error to the exit code (and the line on stderr)."""
    if isinstance(exc, BadArguments):
        print(exc, file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, BmsyncError):
        print(f"bmsync: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        print("bmsync: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    # the reader (head, grep -q) went away; say nothing more
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
