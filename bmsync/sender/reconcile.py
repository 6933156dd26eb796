"""Reconcile and verify: the scan is the truth.

``reconcile`` compares this node's tree with the agent's manifest, by
digest, and sends the difference through the pipeline; it then rescans and
repeats (a few passes at most) so files changed while it ran are caught
too. ``verify`` compares and changes nothing. Both leave the peer's copies
of sync paths missing here alone: a path absent on the active node is
reported, never deleted on the passive one by a resync of the whole set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bmsync.core.excludes import SyncSet
from bmsync.core.frames import BASE_MISMATCH, Failure
from bmsync.core.manifest import Entry
from bmsync.core.ops import Op
from bmsync.link.session import PeerSession, Progress
from bmsync.sender.peer_view import Expected, PeerView
from bmsync.sender.pipeline import Brake, Halted, Pipeline

# Passes before a resync gives up chasing a tree that keeps changing.
MAX_PASSES = 3


@dataclass
class ResyncReport:
    planned: list[Op] = field(default_factory=list)  # first pass
    passes: int = 0
    ops_applied: int = 0
    files_sent: int = 0
    bytes_sent: int = 0
    failures: list[Failure] = field(default_factory=list)
    local_problems: list[tuple[bytes, str]] = field(default_factory=list)
    missing_tops: list[bytes] = field(default_factory=list)
    unsupported: list[bytes] = field(default_factory=list)
    # hard-linked files of the last scan: (device, inode) -> names
    links: dict[tuple[int, int], list[bytes]] = field(default_factory=dict)
    converged: bool = False
    halted: str | None = None  # why the brake stopped it
    # files changed on the peer since bmsync wrote them, and the copies kept
    backups: list[tuple[bytes, str]] = field(default_factory=list)
    # what the peer acknowledged during this resync (None: deleted there)
    sent: dict[bytes, Entry | None] = field(default_factory=dict)


async def reconcile(
    pipeline: Pipeline,
    session: PeerSession,
    *,
    expected: Expected | None = None,
    dry_run: bool = False,
    brake: Brake | None = None,
    progress: Progress | None = None,
    on_plan: Callable[[list[Op]], None] | None = None,
    stopping: Callable[[], bool] | None = None,
) -> ResyncReport:
    """Make the peer like this node. ``brake`` sees each pass's plan before
    it is sent and may halt the resync with a reason. At the end the peer
    view holds the peer's manifest (``pipeline.view.adopt``); if this
    raises, what it knew before (``abandon``).

    With ``expected``, the agent sends its manifest only if it is not the
    expected one; when it is, and this node's scan matches it too (the
    usual start), the view is a copy of the scan.

    Keeping the delta bases of what was sent (``report.sent``) is the
    caller's, so that copying them does not hold up the end of the resync.

    ``stopping``: asked before each pass after the first; when it says so,
    the resync ends there, not converged (the daemon's SIGTERM). Every scan
    runs in a worker thread: the event loop goes on answering meanwhile."""
    report = ResyncReport()
    view = pipeline.view
    # this node scans while the agent scans its own tree: two processes, two cores
    first_scan = asyncio.ensure_future(pipeline.scan_whole())
    try:
        if expected is not None:
            fetched = await session.fetch_manifest_if_changed(expected.digest)
        else:
            fetched = await session.fetch_manifest()
    finally:
        scan = await first_scan
    view.begin(session.peer.node if session.peer else "", fetched, expected, scan.entries)
    try:
        with pipeline.opened() as root_fd:
            for number in range(1, MAX_PASSES + 1):
                if number > 1:
                    if stopping is not None and stopping():
                        break
                    scan = await pipeline.scan_whole()
                ops = pipeline.plan_whole(scan)
                report.links = scan.links
                if number == 1:
                    report.planned = ops
                    report.local_problems = scan.problems
                    report.missing_tops = scan.missing_tops
                    report.unsupported = scan.unsupported
                if not ops:
                    report.converged = True
                    break
                if dry_run:
                    break
                outcome = await pipeline.send(session, root_fd, ops, brake, progress, on_plan)
                if isinstance(outcome, Halted):
                    report.halted = outcome.reason
                    break
                report.passes = number
                report.backups.extend(outcome.backups)
                report.ops_applied += len(ops) - len(outcome.failures)
                report.files_sent += outcome.files_sent
                report.bytes_sent += outcome.bytes_sent
                report.local_problems.extend(outcome.skipped)
                report.sent.update(outcome.results)
                final = [f for f in outcome.failures if f.code != BASE_MISMATCH]
                if final:
                    report.failures = final
                    break  # resending would fail the same way
                # a stale delta base: the next pass sends those files whole
    except BaseException:
        view.abandon()
        raise
    view.adopt()
    return report


async def resync(session: PeerSession, root: Path, syncset: SyncSet) -> ResyncReport:
    """A reconcile with nothing known of the peer beforehand and nothing
    kept after (no record on disk, no delta bases, no brake)."""
    return await reconcile(Pipeline(root, syncset, PeerView(root, None, None)), session)
