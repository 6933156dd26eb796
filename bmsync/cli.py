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
from typing import Any, NoReturn

from bmsync import __version__, config, daemon_cli
from bmsync.agent import run_stdio
from bmsync.bases import BaseStore
from bmsync.core.frames import Purpose
from bmsync.core.ops import Op, describe
from bmsync.core.paths import show
from bmsync.digests import DigestCache
from bmsync.errors import ApplyIncomplete, BmsyncError, ConfigError, LocalFsError, UsageError
from bmsync.log import configure
from bmsync.reconcile import resync, verify
from bmsync.session import PeerSession
from bmsync.state import ensure_state_dir
from bmsync.transport import connect

EXIT_DIFFERENT = 1
EXIT_INTERNAL = 70


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

    daemon_cli.add_commands(commands)

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
    configure(args.log_level, args.log_format)
    try:
        if args.command == "config":
            return _config_check(args)
        if args.command == "agent":
            return run_stdio(args.config)
        conf = config.load(args.config)
        if args.command == "resync":
            if not args.dry_run and (answer := daemon_cli.resync_via_daemon(conf)) is not None:
                return _print_daemon_resync(answer, args.json)
            return asyncio.run(_resync(conf, args))
        if args.command == "verify":
            return asyncio.run(_verify(conf, args))
        if args.command == "run":
            return daemon_cli.cmd_run(conf)
        if args.command == "status":
            return daemon_cli.cmd_status(conf, args)
        if args.command == "pause":
            return daemon_cli.cmd_pause(conf, args)
        if args.command == "resume":
            return daemon_cli.cmd_resume(conf, args)
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


# -- resync and verify ---------------------------------------------------------


async def _connect(conf: config.Config, purpose: Purpose) -> PeerSession:
    peer = conf.require_peer()
    ensure_state_dir(conf.state_dir)
    channel = await connect(peer)
    session = PeerSession(channel, conf.node)
    try:
        await session.open(purpose)
    except BaseException:
        await channel.close()
        raise
    return session


class _Reporter:
    """Progress on a terminal (rich), plain lines otherwise."""

    def __init__(self, json_output: bool) -> None:
        self.quiet = json_output
        self.tty = sys.stdout.isatty() and not json_output
        self._bar: Any = None
        self._task: Any = None

    def plan(self, ops: list[Op]) -> None:
        if self.quiet:
            return
        if not self.tty:
            return
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        self.finish()
        self._bar = Progress(
            TextColumn("resync"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} ops"),
            DownloadColumn(),
            TextColumn("{task.fields[path]}"),
        )
        self._bar.start()
        self._task = self._bar.add_task("resync", total=len(ops), path="")

    def step(self, op: Op, sent: int) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(self._task, advance=1, path=describe(op)[8:][-50:])
        else:
            print(describe(op), flush=True)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


async def _resync(conf: config.Config, args: argparse.Namespace) -> int:
    purpose = Purpose.READ if args.dry_run else Purpose.WRITE
    session = await _connect(conf, purpose)
    reporter = _Reporter(args.json)
    try:
        report = await resync(
            session,
            conf.sync.root,
            conf.syncset(),
            dry_run=args.dry_run,
            progress=reporter.step,
            on_plan=reporter.plan,
            delta_bases=None
            if args.dry_run
            else BaseStore(conf.state_dir / "bases", conf.sync.delta_cache_mb << 20),
            digests=None if args.dry_run else DigestCache(conf.state_dir),
        )
    finally:
        reporter.finish()
        await session.close()
    if args.json:
        print(
            json.dumps(
                {
                    "dry_run": args.dry_run,
                    "planned": [describe(op) for op in report.planned],
                    "passes": report.passes,
                    "ops_applied": report.ops_applied,
                    "files_sent": report.files_sent,
                    "bytes_sent": report.bytes_sent,
                    "failures": [
                        {"path": show(f.path), "reason": f.reason} for f in report.failures
                    ],
                    "local_problems": [
                        {"path": show(p), "reason": r} for p, r in report.local_problems
                    ],
                    "missing_here": [show(p) for p in report.missing_tops],
                    "unsupported": [show(p) for p in report.unsupported],
                    "converged": report.converged,
                },
                indent=2,
            )
        )
    else:
        if args.dry_run:
            for op in report.planned:
                print(describe(op))
            print(f"dry run: {len(report.planned)} change(s) would be made; nothing was changed")
        for top in report.missing_tops:
            print(f"note: {show(top)} does not exist here; the peer's copy is left alone")
        for path in report.unsupported:
            print(f"note: {show(path)} is a FIFO, socket or device node; not synced")
        for path, reason in report.local_problems:
            print(f"warning: {show(path)}: {reason}", file=sys.stderr)
        for failure in report.failures:
            print(f"failed: {show(failure.path)}: {failure.reason}", file=sys.stderr)
        if not args.dry_run:
            state = "in sync" if report.converged else "NOT in sync"
            print(
                f"resync: {report.ops_applied} change(s) applied, {report.files_sent} file(s), "
                f"{report.bytes_sent} bytes sent in {report.passes} pass(es); peer {state}"
            )
    if report.failures:
        raise ApplyIncomplete(
            f"{len(report.failures)} path(s) could not be applied on the peer; see above, "
            "fix the cause and run 'bmsync resync' again"
        )
    if report.local_problems and not args.dry_run:
        raise LocalFsError(
            f"{len(report.local_problems)} path(s) on this node could not be read (see the "
            "warnings above); the peer keeps its copies of them"
        )
    if not args.dry_run and not report.converged:
        raise ApplyIncomplete(
            f"this node's tree kept changing during {report.passes} passes; "
            "run 'bmsync resync' again once it is quiet"
        )
    return 0


def _print_daemon_resync(answer: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(answer, indent=2))
    else:
        for failure in answer["failures"]:
            print(f"failed: {failure['path']}: {failure['reason']}", file=sys.stderr)
        state = "in sync" if answer["converged"] else "NOT in sync"
        print(
            f"resync (through the running daemon): {answer['ops_applied']} change(s) applied, "
            f"{answer['files_sent']} file(s), {answer['bytes_sent']} bytes sent; peer {state}"
        )
    if answer.get("halted"):
        raise ApplyIncomplete(f"resync halted: {answer['halted']}")
    if answer["failures"]:
        raise ApplyIncomplete(f"{len(answer['failures'])} path(s) could not be applied")
    return 0


async def _verify(conf: config.Config, args: argparse.Namespace) -> int:
    session = await _connect(conf, Purpose.READ)
    try:
        found, scan = await verify(session, conf.sync.root, conf.syncset())
    finally:
        await session.close()
    if args.json:
        print(
            json.dumps(
                {
                    "in_sync": not found,
                    "differences": [{"path": show(p), "what": w} for p, w in found],
                    "checked": len(scan.entries),
                },
                indent=2,
            )
        )
    else:
        for path, what in found:
            print(f"differs {show(path)}: {', '.join(what)}")
        for path, reason in scan.problems:
            print(f"warning: {show(path)}: {reason}", file=sys.stderr)
        verdict = "in sync" if not found else f"{len(found)} difference(s)"
        print(f"verify: {len(scan.entries)} path(s) checked; {verdict}")
    return EXIT_DIFFERENT if found else 0
