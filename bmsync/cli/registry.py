"""Every ``bmsync`` command, declared once: its name, its help, its
arguments, what it needs and where its handler is.

The handler is named, not imported ("module:function"): the parser is
built from this table for every run, and ``bmsync agent`` (started for each
SSH session) must not load asyncssh, watchdog nor the daemon. This module
imports the standard library only.

A handler returns the exit code, and is called according to ``needs``:
``handler(conf, args)`` with the loaded Config, ``handler(path, args)`` with
the configuration file's path (the handler loads it, if at all), or
``handler(args)``. It raises a BmsyncError for the exit codes of errors.

To add a command: write its handler in its group's module, then add one
``Command`` below (a ``Command`` with ``subcommands`` is a group, as
``config``); the parser, the dispatch and the tests follow.
"""

from __future__ import annotations

import argparse
import enum
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

Handler = Callable[..., int]
Arguments = Callable[[argparse.ArgumentParser], None]


class Needs(enum.Enum):
    """What main() hands the handler, before ``args``."""

    CONFIG = "the loaded configuration"
    CONFIG_PATH = "the configuration file's path"
    NOTHING = "nothing"


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    handler: str = ""  # "module:function", imported when the command runs
    needs: Needs = Needs.CONFIG
    arguments: Arguments | None = None
    subcommands: tuple[Command, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.handler) == bool(self.subcommands):
            raise ValueError(f"command {self.name!r}: a handler, or sub-commands, not both")
        if self.handler and self.handler.count(":") != 1:
            raise ValueError(f"command {self.name!r}: handler {self.handler!r} is not module:name")

    def resolve(self) -> Handler:
        """Import the handler."""
        module, name = self.handler.split(":")
        found = getattr(importlib.import_module(module), name)
        if not callable(found):
            raise TypeError(f"command {self.name!r}: {self.handler} is not callable")
        return cast(Handler, found)


def walk(
    commands: tuple[Command, ...], above: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Command]]:
    """Every command and group, with its path (("config", "check"))."""
    for command in commands:
        path = (*above, command.name)
        yield path, command
        yield from walk(command.subcommands, path)


# -- the arguments of each command ----------------------------------------------


def _json(what: str) -> Arguments:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help=what)

    return add


def _resync(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would change, change nothing"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.add_argument(
        "--allow-deletes",
        action="store_true",
        help="go past the delete-storm brake: delete on the peer what is gone here",
    )


def _pause(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", default="", help="recorded and shown by 'bmsync status'")


def _resume(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--discard",
        action="store_true",
        help="after a delete storm: restore the deleted files from the peer instead",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="clear a split-brain suspension without evidence (needs --reason; recorded)",
    )
    parser.add_argument("--reason", default="", help="why --force is safe (recorded)")


def _reset_epoch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to",
        type=int,
        required=True,
        metavar="EPOCH",
        help="the epoch of the last promotion you trust",
    )
    parser.add_argument("--reason", required=True, help="why (logged, kept in role.json)")


def _dry_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands it would run, run none"
    )


def _vip_up(parser: argparse.ArgumentParser) -> None:
    _dry_run(parser)
    parser.add_argument(
        "--force",
        action="store_true",
        help="take the VIP even though another host answers for it (only once that host "
        "is fenced or gone; logged)",
    )


def _fence(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--test",
        action="store_true",
        help="only read the peer's power state (credentials, reachability); change nothing",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the commands it would run (the password file's path, never the "
        "password); run nothing",
    )


def _storage_mount(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--peer-is-down",
        action="store_true",
        help="the peer cannot be asked (no peer section, unreachable) because it is powered "
        "off or fenced: mount anyway (logged); never applies to a peer that answers",
    )
    _dry_run(parser)


def _plan_dry_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (each step, its node and its undo) and run none of it",
    )


def _takeover(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help="fence the peer even though its agent still answers (logged)",
    )
    parser.add_argument(
        "--peer-is-powered-off",
        action="store_true",
        help="without ha.fencing: you checked that the peer is off (needs --reason)",
    )
    parser.add_argument("--reason", default="", help="how you know (logged, kept in role.json)")
    _plan_dry_run(parser)


def _status_ha(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    _dry_run(parser)


# -- the commands, in the order of 'bmsync --help' ------------------------------

COMMANDS: tuple[Command, ...] = (
    Command(
        "resync",
        "make the peer's tree identical to this one",
        "bmsync.cli.sync:resync",
        arguments=_resync,
    ),
    Command(
        "verify",
        "compare with the peer by digest; change nothing",
        "bmsync.cli.sync:verify",
        arguments=_json("print a JSON report"),
    ),
    Command(
        "agent",
        "speak the sync protocol on stdin/stdout (the peer's forced command)",
        "bmsync.cli.agent:agent",
        needs=Needs.CONFIG_PATH,
    ),
    Command("run", "the real-time sync daemon (systemd starts it)", "bmsync.cli.daemon:run"),
    Command(
        "status",
        "what the daemon is doing (exit 3 if it is down)",
        "bmsync.cli.daemon:status",
        arguments=_json("print the status as JSON"),
    ),
    Command(
        "pause",
        "stop sending changes until 'bmsync resume'",
        "bmsync.cli.daemon:pause",
        arguments=_pause,
    ),
    Command(
        "resume",
        "send changes again (after pause or a brake)",
        "bmsync.cli.daemon:resume",
        arguments=_resume,
    ),
    Command(
        "promote",
        "make this node the active one, at an epoch above every one seen",
        "bmsync.cli.roles:promote",
    ),
    Command("demote", "make this node passive (it then only receives)", "bmsync.cli.roles:demote"),
    Command(
        "reset-epoch",
        "passive node only: lower the highest epoch seen here, raised by a sender "
        "with a leaked key (replace the key first)",
        "bmsync.cli.roles:reset_epoch",
        arguments=_reset_epoch,
    ),
    Command(
        "ha",
        "the HA primitives (floating IP, storage, services, fencing), each runnable by hand, "
        "and the operations built on them (switchover, takeover)",
        subcommands=(
            Command(
                "vip",
                "the floating IP on this node",
                subcommands=(
                    Command(
                        "up",
                        "hold the VIP here and announce it (gratuitous ARP)",
                        "bmsync.cli.ha:vip_up_command",
                        arguments=_vip_up,
                    ),
                    Command(
                        "down",
                        "release the VIP here",
                        "bmsync.cli.ha:vip_down_command",
                        arguments=_dry_run,
                    ),
                ),
            ),
            Command(
                "storage",
                "the shared storage of ha.storage on this node",
                subcommands=(
                    Command(
                        "mount",
                        "check and mount each entry in order, unless the peer has it mounted",
                        "bmsync.cli.ha:storage_mount",
                        arguments=_storage_mount,
                    ),
                    Command(
                        "unmount",
                        "unmount each entry in reverse order, stopping the processes holding it",
                        "bmsync.cli.ha:storage_unmount",
                        arguments=_dry_run,
                    ),
                ),
            ),
            Command(
                "services",
                "the commands of ha.services, run here",
                subcommands=(
                    Command(
                        "start",
                        "run the start commands in order, stopping at the first that fails",
                        "bmsync.cli.ha:services_start",
                        arguments=_dry_run,
                    ),
                    Command(
                        "stop",
                        "run the stop commands in order, stopping at the first that fails",
                        "bmsync.cli.ha:services_stop",
                        arguments=_dry_run,
                    ),
                    Command(
                        "check",
                        "run every check command (exit 10 if any fails)",
                        "bmsync.cli.ha:services_check",
                        arguments=_dry_run,
                    ),
                ),
            ),
            Command(
                "fence",
                "power the peer off through its BMC and confirm it is off (exit 10 if not)",
                "bmsync.cli.ha:fence",
                arguments=_fence,
            ),
            Command(
                "switchover",
                "move the active role, storage, VIP and services to the passive node, both up "
                "(planned; run on either node)",
                "bmsync.cli.ha_operations:switchover",
                arguments=_plan_dry_run,
            ),
            Command(
                "takeover",
                "the peer is lost: fence it, then take the storage, VIP, services and the "
                "active role here",
                "bmsync.cli.ha_operations:takeover",
                arguments=_takeover,
            ),
            Command(
                "status",
                "the VIP, the storage, the peer's power and the services, as seen from here",
                "bmsync.cli.ha_status:status",
                arguments=_status_ha,
            ),
        ),
    ),
    Command(
        "config",
        "check the configuration file",
        subcommands=(
            Command(
                "check",
                "validate the file and print the effective sync rules",
                "bmsync.cli.config:check",
                needs=Needs.CONFIG_PATH,
                arguments=_json("print the result and the rules as JSON"),
            ),
        ),
    ),
)
