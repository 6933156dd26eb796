"""The commands that talk to the peer directly: resync and verify. A
resync goes through the daemon instead when one answers."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from bmsync.cli.daemon_client import resync_via_daemon
from bmsync.config.model import Config
from bmsync.core.brake import DeleteBrake, synced_files
from bmsync.core.errors import ApplyIncomplete, LocalFsError, SplitBrainSuspected, SyncPaused
from bmsync.core.frames import Purpose
from bmsync.core.manifest import Entry
from bmsync.core.ops import Op, describe
from bmsync.core.paths import show
from bmsync.fs.bases import BaseStore
from bmsync.fs.digests import DigestCache
from bmsync.link.session import PeerSession
from bmsync.link.ssh import connect
from bmsync.link.verify import verify as verify_with_peer
from bmsync.sender.peer_view import PeerView
from bmsync.sender.pipeline import Pipeline
from bmsync.sender.reconcile import reconcile
from bmsync.state.directory import ensure_state_dir
from bmsync.state.roles import RoleStore, require_active

EXIT_DIFFERENT = 1


async def _connect(conf: Config, purpose: Purpose) -> PeerSession:
    peer = conf.require_peer()
    ensure_state_dir(conf.state_dir)
    roles = RoleStore(conf.state_dir, conf.node)
    me = roles.load()
    if purpose is Purpose.WRITE:
        require_active(me)
    channel = await connect(peer)
    session = PeerSession(channel, conf.node, me.epoch, me.role, max_entries=conf.sync.max_entries)
    try:
        await session.open(purpose)
    except SplitBrainSuspected as exc:
        await channel.close()
        roles.learn(exc.refusal)
        raise
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


HELD_BACK_ADVICE = (
    "nothing was sent to the peer (no deletion, no other change). If these deletions "
    "are wanted: 'bmsync resync --allow-deletes'; if not, restore the files here first"
)


class _HandBrake:
    """The daemon's delete-storm brake, for a resync run by hand: every
    pass's deletions count (the ``Brake`` of the pipeline)."""

    def __init__(self, conf: Config) -> None:
        self._brake = DeleteBrake(conf.brake_limits())

    def check(self, deletes: int, peer: Mapping[bytes, Entry]) -> str | None:
        return self._brake.check(deletes, synced_files(peer), time.monotonic())

    def sent(self, deletes: int) -> None:
        self._brake.record(deletes, time.monotonic())


def resync(conf: Config, args: argparse.Namespace) -> int:
    if not args.dry_run and (answer := resync_via_daemon(conf, args.allow_deletes)) is not None:
        return print_daemon_resync(answer, args.json)
    return asyncio.run(_resync(conf, args))


def verify(conf: Config, args: argparse.Namespace) -> int:
    return asyncio.run(_verify(conf, args))


async def _resync(conf: Config, args: argparse.Namespace) -> int:
    purpose = Purpose.READ if args.dry_run else Purpose.WRITE
    session = await _connect(conf, purpose)
    reporter = _Reporter(args.json)
    bases = None
    if not args.dry_run:
        bases = BaseStore.in_state_dir(conf.state_dir, conf.sync.delta_cache_mb)
    view = PeerView(conf.sync.root, None, bases)
    pipeline = Pipeline(
        conf.sync.root,
        conf.syncset(),
        view,
        digests=None if args.dry_run else DigestCache(conf.state_dir),
    )
    try:
        report = await reconcile(
            pipeline,
            session,
            dry_run=args.dry_run,
            progress=reporter.step,
            on_plan=reporter.plan,
            brake=None if args.dry_run or args.allow_deletes else _HandBrake(conf),
        )
    finally:
        reporter.finish()
        await session.close()
    view.keep_bases_now(report.sent)
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
                    "changed_on_peer": [
                        {"path": show(p), "kept": kept} for p, kept in report.backups
                    ],
                    "unsupported": [show(p) for p in report.unsupported],
                    "converged": report.converged,
                    "halted": report.halted,
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
        for path, kept in report.backups:
            print(f"note: {show(path)} had been changed on the peer; its copy is kept at {kept}")
        if not args.dry_run:
            state = "in sync" if report.converged else "NOT in sync"
            print(
                f"resync: {report.ops_applied} change(s) applied, {report.files_sent} file(s), "
                f"{report.bytes_sent} bytes sent in {report.passes} pass(es); peer {state}"
            )
    if report.halted is not None:
        raise SyncPaused(f"resync held back: {report.halted}; {HELD_BACK_ADVICE}")
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


def print_daemon_resync(answer: dict[str, Any], as_json: bool) -> int:
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
        raise SyncPaused(
            f"resync held back: {answer['halted']}; the daemon is paused and nothing was "
            "deleted on the peer. 'bmsync resume' propagates the deletions; 'bmsync resume "
            "--discard' restores the files here instead"
        )
    if answer["failures"]:
        raise ApplyIncomplete(f"{len(answer['failures'])} path(s) could not be applied")
    return 0


async def _verify(conf: Config, args: argparse.Namespace) -> int:
    session = await _connect(conf, Purpose.READ)
    try:
        found, scan = await verify_with_peer(session, conf.sync.root, conf.syncset())
    finally:
        await session.close()
    if args.json:
        print(
            json.dumps(
                {
                    "in_sync": not found,
                    "differences": [{"path": show(p), "what": w} for p, w in found],
                    "checked": len(scan.entries),
                    "unsupported": [show(p) for p in scan.unsupported],
                },
                indent=2,
            )
        )
    else:
        for path, what in found:
            print(f"differs {show(path)}: {', '.join(what)}")
        for path in scan.unsupported:
            print(f"note: {show(path)} is a FIFO, socket or device node; not synced")
        for path, reason in scan.problems:
            print(f"warning: {show(path)}: {reason}", file=sys.stderr)
        verdict = "in sync" if not found else f"{len(found)} difference(s)"
        print(f"verify: {len(scan.entries)} path(s) checked; {verdict}")
    return EXIT_DIFFERENT if found else 0
