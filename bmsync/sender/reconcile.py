"""Reconcile and verify: the scan is the truth.

``resync`` compares this node's tree with the agent's manifest, by digest,
and sends the difference; it then rescans and repeats (a few passes at most)
so files changed while it ran are caught too. ``verify`` compares and
changes nothing. Both leave the peer's copies of sync paths missing here
alone: a path absent on the active node is reported, never deleted on the
passive one by a resync of the whole set.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from bmsync.core.errors import LocalFsError
from bmsync.core.excludes import SyncSet
from bmsync.core.frames import BASE_MISMATCH, Failure
from bmsync.core.manifest import Entry, Kind, differences, manifest_digest
from bmsync.core.ops import Op
from bmsync.core.paths import is_within, show
from bmsync.core.planner import plan
from bmsync.fs.bases import BaseStore
from bmsync.fs.digests import DigestCache
from bmsync.fs.files import open_file, open_root
from bmsync.fs.scan import Scan, scan_tree
from bmsync.link.file_sender import DeltaBase
from bmsync.link.session import Acknowledged, PeerSession, Progress

log = structlog.get_logger("bmsync.reconcile")

# Passes before a resync gives up chasing a tree that keeps changing.
MAX_PASSES = 3


@dataclass(frozen=True)
class Expected:
    """What this node believes the peer holds (its acknowledged manifest):
    the digest up front, the entries only if they turn out to be needed
    (100,000 of them need not sit in memory beside a scan of as many)."""

    digest: bytes
    entries: Callable[[], dict[bytes, Entry]]


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
    halted: str | None = None  # why the guard stopped it
    peer: dict[bytes, Entry] = field(default_factory=dict)
    # the agent confirmed the expected manifest and nothing was applied:
    # ``peer`` is that manifest, and a record of it need not be rewritten
    peer_unchanged: bool = False
    # files changed on the peer since bmsync wrote them, and the copies kept
    backups: list[tuple[bytes, str]] = field(default_factory=list)
    # what the peer acknowledged during this resync (None: deleted there)
    sent: dict[bytes, Entry | None] = field(default_factory=dict)


def _peer_view(peer: dict[bytes, Entry], scan: Scan) -> dict[bytes, Entry]:
    """The peer's manifest minus what the planner must not delete: copies of
    sync paths missing here, and paths this node failed to read."""
    keep = [*scan.missing_tops, *scan.unsupported, *(p for p, _ in scan.problems)]
    if not keep:
        return peer
    return {p: e for p, e in peer.items() if not any(is_within(p, k) for k in keep)}


async def resync(
    session: PeerSession,
    root: Path,
    syncset: SyncSet,
    dry_run: bool = False,
    progress: Progress | None = None,
    on_plan: Callable[[list[Op]], None] | None = None,
    guard: Callable[[list[Op], Mapping[bytes, Entry]], str | None] | None = None,
    delta_bases: BaseStore | None = None,
    digests: DigestCache | None = None,
    expected: Expected | None = None,
    stopping: Callable[[], bool] | None = None,
) -> ResyncReport:
    """Make the peer like this node. ``guard`` sees each pass's plan before
    it is applied and may halt the resync with a reason (the delete-storm
    brake); ``report.peer`` is the peer's manifest at the end.

    With ``expected``, the agent sends its manifest only if it is not the
    expected one; when it is, and this node's scan matches it too (the
    usual start), ``report.peer`` is a copy of the scan.

    ``delta_bases`` is only read: keeping the bases of what was sent
    (``keep_bases`` with ``report.sent``) is the caller's, so that copying
    them does not hold up the end of the resync.

    ``stopping``: asked before each pass after the first; when it says so,
    the resync ends there, not converged (the daemon's SIGTERM). Every scan
    runs in a worker thread: the event loop goes on answering meanwhile."""
    report = ResyncReport()
    # this node scans while the agent scans its own tree: two processes, two cores
    first_scan = asyncio.ensure_future(asyncio.to_thread(scan_tree, root, syncset, digests))
    try:
        if expected is not None:
            fetched = await session.fetch_manifest_if_changed(expected.digest)
        else:
            fetched = await session.fetch_manifest()
    finally:
        scan = await first_scan
    # what bmsync last wrote on the peer, as far as this node knows
    acknowledged: dict[bytes, Entry] | None = None
    if fetched is not None:
        peer = fetched
        if expected is not None:
            log.info("peer_manifest_differs", entries=len(peer), why="not what was acknowledged")
            acknowledged = expected.entries()
    else:
        assert expected is not None
        report.peer_unchanged = True
        if manifest_digest(scan.entries) == expected.digest:
            peer = scan.entries  # the same entries: nothing to plan, nothing to change
        else:
            peer = expected.entries()
        log.info("peer_manifest_confirmed", entries=len(peer))
        acknowledged = peer
    report.peer = peer
    try:
        root_fd = open_root(root)
    except OSError as exc:
        raise LocalFsError(f"cannot open sync root {root}: {exc.strerror}") from exc
    try:
        for number in range(1, MAX_PASSES + 1):
            if number > 1:
                if stopping is not None and stopping():
                    break
                scan = await asyncio.to_thread(scan_tree, root, syncset, digests)
            ops = plan(scan.entries, _peer_view(peer, scan))
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
            if guard is not None and (reason := guard(ops, peer)) is not None:
                report.halted = reason
                break
            if on_plan is not None:
                on_plan(ops)
            report.passes = number
            outcome = await session.apply(
                ops,
                root_fd,
                progress,
                base_finder(peer, delta_bases),
                None if acknowledged is None else acknowledged_in(acknowledged),
            )
            report.backups.extend(outcome.backups)
            if acknowledged is not None and acknowledged is not peer:
                for path, entry in outcome.results.items():
                    if entry is None:
                        acknowledged.pop(path, None)
                    else:
                        acknowledged[path] = entry
            if outcome.results:
                report.peer_unchanged = False
            report.ops_applied += len(ops) - len(outcome.failures)
            report.files_sent += outcome.files_sent
            report.bytes_sent += outcome.bytes_sent
            report.local_problems.extend(outcome.skipped)
            for path, entry in outcome.results.items():
                if entry is None:
                    peer.pop(path, None)
                else:
                    peer[path] = entry
            report.sent.update(outcome.results)
            final = [f for f in outcome.failures if f.code != BASE_MISMATCH]
            if final:
                report.failures = final
                break  # resending would fail the same way
            # a stale delta base: the next pass sends those files whole
    finally:
        os.close(root_fd)
    return report


def acknowledged_in(manifest: Mapping[bytes, Entry]) -> Acknowledged:
    """path -> the digest of the file the peer acknowledged there (b"": no
    file; None: something else, not compared)."""

    def find(path: bytes) -> bytes | None:
        entry = manifest.get(path)
        if entry is None:
            return b""
        return entry.digest if entry.kind == Kind.FILE else None

    return find


def base_finder(peer: Mapping[bytes, Entry], bases: BaseStore | None) -> DeltaBase | None:
    """path -> the peer's version of it, if a copy is kept here."""
    if bases is None:
        return None
    store = bases

    def find(path: bytes) -> tuple[bytes, bytes] | None:
        entry = peer.get(path)
        if entry is None or entry.kind != Kind.FILE or not store.wanted(entry.size):
            return None
        data = store.get(entry.digest)
        return None if data is None else (entry.digest, data)

    return find


def keep_bases(root: Path, sent: Mapping[bytes, Entry | None], bases: BaseStore) -> None:
    """Keep a copy of each large file the peer now holds (``sent``: what it
    acknowledged), as the base of the next delta; only if this node's file
    still is that version. Blocking: the daemon runs it in a worker thread."""
    try:
        root_fd = open_root(root)
    except OSError:
        return  # the root is gone: the next change finds out and says so
    try:
        for path, entry in sent.items():
            if (
                entry is None
                or entry.kind != Kind.FILE
                or not bases.wanted(entry.size)
                or entry.digest in bases
            ):
                continue
            try:
                fd = open_file(root_fd, path)
            except OSError:
                continue  # gone since: the next change of it goes whole
            try:
                now = os.fstat(fd)
                if stat.S_ISREG(now.st_mode) and now.st_size == entry.size:
                    bases.copy_in(entry.digest, fd, entry.size)
            except OSError as exc:
                log.warning("delta_base_not_kept", path=show(path), error=exc.strerror or str(exc))
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)


async def verify(
    session: PeerSession, root: Path, syncset: SyncSet
) -> tuple[list[tuple[bytes, list[str]]], Scan]:
    """Differences between this node's tree and the peer's, path by path:
    every file on both sides is read (no digest cache)."""
    fetched = await session.fetch_manifest(fresh=True)
    scan = scan_tree(root, syncset)
    peer = _peer_view(fetched, scan)
    found = []
    for path in sorted(scan.entries.keys() | peer.keys()):
        what = differences(scan.entries.get(path), peer.get(path))
        if what:
            found.append((path, what))
    for path in scan.unsupported:
        # skipped, so the peer keeps what it had there: not the same tree
        if (theirs := fetched.get(path)) is not None:
            kind = theirs.kind.name.lower()
            found.append((path, [f"a FIFO, socket or device node here, a {kind} on the peer"]))
    return found, scan
