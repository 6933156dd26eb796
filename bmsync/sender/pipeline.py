"""The one path a change takes to the peer: scan -> plan -> delete-storm
brake -> send -> record what the peer acknowledged (in the ``PeerView``).

A batch of the daemon (``Pipeline.batch``: a few paths, planned in their
scope only) and each pass of a reconcile (``Pipeline.whole``: the whole
tree) both go through ``Pipeline.send``; the reconcile's passes are in
``reconcile``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bmsync.core.brake import lost_files
from bmsync.core.errors import LocalFsError
from bmsync.core.excludes import SyncSet
from bmsync.core.manifest import Entry, Kind
from bmsync.core.ops import Op
from bmsync.core.planner import plan
from bmsync.core.tree import plan_changes
from bmsync.fs.digests import DigestCache
from bmsync.fs.files import open_root
from bmsync.fs.scan import Scan, scan_paths, scan_tree
from bmsync.link.session import Outcome, PeerSession, Progress
from bmsync.link.verify import peer_scope
from bmsync.sender.found import LinkGroups, UnsupportedFiles
from bmsync.sender.peer_view import PeerView

# A batch with more paths than this, or a whole subtree, is scanned in a
# worker thread (the loop goes on answering); a smaller one on the loop, at
# once (latency).
SCAN_ON_LOOP_MAX = 64


class Brake(Protocol):
    """The delete-storm brake, as the pipeline sees it."""

    def check(self, deletes: int, peer: Mapping[bytes, Entry]) -> str | None:
        """Before sending a plan that loses ``deletes`` files on the peer:
        a reason stops it (nothing is sent)."""

    def sent(self, deletes: int) -> None:
        """The plan was applied."""


@dataclass(frozen=True)
class Halted:
    """The brake stopped the plan: nothing was sent."""

    reason: str


@dataclass
class BatchResult:
    changed: dict[bytes, bool]  # the paths of the batch, widened, minus unreadable ones
    scan: Scan
    ops: list[Op] = field(default_factory=list)
    sent: Outcome | Halted | None = None  # None: nothing to send


class Pipeline:
    """This node's tree (``root``, ``syncset``) sent to the peer whose
    acknowledged manifest ``view`` holds. ``links`` and ``unsupported``:
    what the scans found (hard-link groups; FIFOs and the like)."""

    def __init__(
        self, root: Path, syncset: SyncSet, view: PeerView, digests: DigestCache | None = None
    ) -> None:
        self.root = root
        self.syncset = syncset
        self.view = view
        self.digests = digests
        self.links = LinkGroups()  # a change through one name of a file is through all
        self.unsupported = UnsupportedFiles()

    def retarget(self, root: Path, syncset: SyncSet) -> None:
        """A reloaded configuration."""
        self.root, self.syncset = root, syncset
        self.view.root = root

    @contextmanager
    def opened(self) -> Iterator[int]:
        """The sync root's descriptor, for one batch or reconcile."""
        try:
            root_fd = open_root(self.root)
        except OSError as exc:
            raise LocalFsError(f"cannot open sync root {self.root}: {exc.strerror}") from exc
        try:
            yield root_fd
        finally:
            os.close(root_fd)

    # -- scan and plan --------------------------------------------------------

    async def scan_whole(self) -> Scan:
        """The whole tree, in a worker thread."""
        return await asyncio.to_thread(scan_tree, self.root, self.syncset, self.digests)

    def plan_whole(self, scan: Scan) -> list[Op]:
        return plan(scan.entries, peer_scope(self.view.manifest, scan))

    async def scan_batch(self, root_fd: int, paths: Mapping[bytes, bool]) -> BatchResult:
        """The batch's paths, widened to what the peer must get with them:
        all of a directory the peer lacks, every name of a hard-linked file."""
        changed = dict(paths)
        peer = self.view.tree
        scan = await _scan_paths(root_fd, self.syncset, changed)
        wider = {
            p: True
            for p, deep in changed.items()
            if not deep
            and (here := scan.entries.get(p)) is not None
            and here.kind == Kind.DIR
            and (p not in peer or peer[p].kind != Kind.DIR)
        }
        if wider:  # a directory the peer lacks: take all of it
            changed.update(wider)
            _merge(scan, await _scan_paths(root_fd, self.syncset, wider))
        self.links.update(scan.links, scanned=[*changed, *scan.entries])
        siblings = {o: False for p in changed for o in self.links.others(p)}
        siblings = {p: deep for p, deep in siblings.items() if p not in changed}
        if siblings:  # the other names of a file changed through one of them
            changed.update(siblings)
            _merge(scan, await _scan_paths(root_fd, self.syncset, siblings))
        self.unsupported.update(scan.unsupported, scanned=changed)
        for path, _ in scan.problems:
            changed.pop(path, None)
        for path in scan.unsupported:
            changed.pop(path, None)
        return BatchResult(changed, scan)

    # -- send and record ------------------------------------------------------------

    async def batch(
        self, session: PeerSession, root_fd: int, paths: Mapping[bytes, bool], brake: Brake
    ) -> BatchResult:
        """A batch of the daemon: scan, plan in its scope, brake, send, record."""
        result = await self.scan_batch(root_fd, paths)
        result.ops = plan_changes(result.scan.entries, self.view.tree, result.changed)
        if result.ops:
            result.sent = await self.send(session, root_fd, result.ops, brake)
        return result

    async def send(
        self,
        session: PeerSession,
        root_fd: int,
        ops: list[Op],
        brake: Brake | None,
        progress: Progress | None = None,
        on_plan: Callable[[list[Op]], None] | None = None,
    ) -> Outcome | Halted:
        """Brake, send, record what the peer acknowledged."""
        peer = self.view.manifest
        deletes = lost_files(ops, peer)
        if brake is not None and (reason := brake.check(deletes, peer)) is not None:
            return Halted(reason)
        if on_plan is not None:
            on_plan(ops)
        outcome = await session.apply(
            ops, root_fd, progress, self.view.bases(), self.view.expectations()
        )
        if brake is not None:
            brake.sent(deletes)
        self.view.record(outcome.results)
        return outcome


def _merge(scan: Scan, more: Scan) -> None:
    """What a second scan of the same batch found, into the first."""
    scan.entries.update(more.entries)
    scan.problems += more.problems
    scan.unsupported += more.unsupported
    for inode, names in more.links.items():
        scan.links.setdefault(inode, []).extend(names)


async def _scan_paths(root_fd: int, syncset: SyncSet, paths: dict[bytes, bool]) -> Scan:
    """``scan_paths``; a large one (or one with a subtree) in a worker
    thread, on its own copy of ``root_fd`` (the batch may be abandoned,
    and its descriptor closed, while the thread still reads)."""
    if len(paths) <= SCAN_ON_LOOP_MAX and not any(paths.values()):
        return scan_paths(root_fd, syncset, paths)
    fd = os.dup(root_fd)

    def scan() -> Scan:
        try:
            return scan_paths(fd, syncset, paths)
        finally:
            os.close(fd)

    return await asyncio.to_thread(scan)
