"""What the passive node has acknowledged: the one owner of the peer's
manifest as this node knows it, of its record on disk (``ManifestStore``)
and of the delta bases (this node's copies of the peer's large files).

Everything that changes that knowledge goes through ``PeerView``: a
reconcile starts from the manifest the agent confirms or sends
(``begin``) and ends by adopting it (``adopt``) or dropping it
(``abandon``); a batch's acknowledged results are ``record``-ed (memory,
then the journal, fsynced). The pipeline plans against ``manifest``, asks
the agent to check ``expectations`` and sends deltas from ``bases``.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from bmsync.core.manifest import Entry, Kind, manifest_digest
from bmsync.core.paths import show
from bmsync.core.tree import ManifestTree
from bmsync.fs.bases import BaseStore
from bmsync.fs.files import open_file, open_root, release_free_memory
from bmsync.link.file_sender import DeltaBase
from bmsync.link.session import Acknowledged
from bmsync.state.journal import ManifestStore

log = structlog.get_logger("bmsync.peer_view")


@dataclass(frozen=True)
class Expected:
    """What this node believes the peer holds (its acknowledged manifest):
    the digest up front, the entries only if they turn out to be needed
    (100,000 of them need not sit in memory beside a scan of as many)."""

    digest: bytes
    entries: Callable[[], dict[bytes, Entry]]


@dataclass
class _Reconciling:
    """A reconcile under way: the agent's manifest, updated with what it
    acknowledges; and what bmsync last wrote there (the agent keeps a copy
    of a file that is not that), when this node knew it."""

    peer: dict[bytes, Entry]
    believed: dict[bytes, Entry] | None  # None: no expectations sent
    unchanged: bool  # the agent confirmed the expected manifest, nothing applied since


class PeerView:
    """The peer's acknowledged manifest. ``store``: its record on disk (the
    daemon's; None: kept in memory only, as by ``bmsync resync``);
    ``bases``: the delta bases (None: every file goes whole)."""

    def __init__(self, root: Path, store: ManifestStore | None, bases: BaseStore | None) -> None:
        self.root = root
        self.tree = ManifestTree()
        self.node = ""  # whose manifest ``tree`` is
        self._store = store
        self._bases = bases
        self._reconciling: _Reconciling | None = None
        self._stored: asyncio.Future[tuple[str, bytes] | None] | None = None
        self._copying: asyncio.Future[None] | None = None  # delta bases, in a worker thread

    # -- what the pipeline reads ----------------------------------------------

    @property
    def manifest(self) -> Mapping[bytes, Entry]:
        """The peer's manifest, as far as this node knows (plans are made
        against it)."""
        return self.tree if self._reconciling is None else self._reconciling.peer

    def expectations(self) -> Acknowledged | None:
        """What the agent checks before it overwrites (None: nothing)."""
        if self._reconciling is None:
            return acknowledged_in(self.tree)
        believed = self._reconciling.believed
        return None if believed is None else acknowledged_in(believed)

    def bases(self) -> DeltaBase | None:
        return base_finder(self.manifest, self._bases)

    # -- what changes it ----------------------------------------------------------

    def record(self, results: Mapping[bytes, Entry | None]) -> None:
        """What the agent acknowledged (None: deleted there). Outside a
        reconcile, journaled (fsynced) before the batch counts as done."""
        pending = self._reconciling
        if pending is not None:
            if results:
                pending.unchanged = False
            targets = [pending.peer]
            if pending.believed is not None and pending.believed is not pending.peer:
                targets.append(pending.believed)
            for target in targets:
                for path, entry in results.items():
                    if entry is None:
                        target.pop(path, None)
                    else:
                        target[path] = entry
            return
        for path, entry in results.items():
            self.tree.set(path, entry)
        if self._store is not None:
            self._store.record(list(results.items()))
            if self._store.needs_compaction():
                self._store.replace(self.node, self.tree.as_dict())

    def begin(
        self,
        node: str,
        fetched: dict[bytes, Entry] | None,
        expected: Expected | None,
        scanned: dict[bytes, Entry],
    ) -> None:
        """A reconcile starts: ``fetched`` is the agent's manifest, or None
        if it confirmed ``expected``; ``scanned``, this node's tree (if the
        expected manifest is that, it stands in for it: no second copy)."""
        self.node = node
        if fetched is not None:
            believed = None
            if expected is not None:
                log.info(
                    "peer_manifest_differs", entries=len(fetched), why="not what was acknowledged"
                )
                believed = expected.entries()
            self._reconciling = _Reconciling(fetched, believed, unchanged=False)
            return
        assert expected is not None
        # the same entries as the scan: nothing to plan, nothing to change
        same = manifest_digest(scanned) == expected.digest
        peer = scanned if same else expected.entries()
        log.info("peer_manifest_confirmed", entries=len(peer))
        self._reconciling = _Reconciling(peer, peer, unchanged=True)

    @property
    def unchanged(self) -> bool:
        """The reconcile under way has found and left the expected manifest."""
        return self._reconciling is not None and self._reconciling.unchanged

    def adopt(self) -> None:
        """The reconcile ended (converged or not): its view of the peer is
        the one. Rewritten on disk unless the agent confirmed the record and
        nothing was applied."""
        pending, self._reconciling = self._reconciling, None
        if pending is None:
            return
        if not (pending.unchanged and len(self.tree) > 0):
            self.tree = ManifestTree.owning(pending.peer)
        if not pending.unchanged and self._store is not None:
            self._store.replace(self.node, pending.peer)

    def abandon(self) -> None:
        """The reconcile was interrupted: what was known before stands (the
        next reconcile compares again)."""
        self._reconciling = None

    # -- the record on disk ---------------------------------------------------------

    def load_stored_digest(self) -> None:
        """Start working out the stored manifest's digest (a worker thread:
        while SSH connects)."""
        if self._store is not None:
            self._stored = asyncio.ensure_future(asyncio.to_thread(self._stored_digest))

    def _stored_digest(self) -> tuple[str, bytes] | None:
        assert self._store is not None
        found = self._store.stored_digest()
        release_free_memory()  # after a crash it decoded every entry; the scan comes next
        return found

    async def expected(self, node: str) -> Expected | None:
        """What ``node`` should hold: the agent confirms it with one digest
        instead of sending every entry."""
        if len(self.tree) > 0:
            tree = self.tree
            return Expected(tree.digest(), tree.as_dict)
        stored, self._stored = self._stored, None
        found = None if stored is None else await stored
        if found is None or found[0] != node or self._store is None:
            return None
        store = self._store
        return Expected(found[1], lambda: store.load(node))

    def close(self) -> None:
        """The daemon stops: the next start then confirms the peer from the
        snapshot's header alone."""
        if self._store is None:
            return
        if self._store.has_journal() and self.node:
            self._store.replace(self.node, self.tree.as_dict())
        self._store.close()

    # -- delta bases ----------------------------------------------------------------

    def copy_bases(self, sent: Mapping[bytes, Entry | None]) -> bool:
        """Keep the delta bases of what the peer now holds, in a worker
        thread: the batch (or "syncing") need not wait for the copies.
        True if copies were started."""
        if self._bases is None:
            return False
        if any(e is not None and BaseStore.wanted(e.size) for e in sent.values()):
            self._copying = asyncio.ensure_future(
                asyncio.to_thread(keep_bases, self.root, dict(sent), self._bases)
            )
            return True
        return False

    async def bases_copied(self) -> None:
        """Wait for the delta bases left to copy: the store is used by one
        thread at a time."""
        copying, self._copying = self._copying, None
        if copying is None:
            return
        try:
            await copying
        except OSError as exc:  # costs bandwidth later, never correctness
            log.warning("delta_bases_not_kept", error=str(exc))

    def keep_bases_now(self, sent: Mapping[bytes, Entry | None]) -> None:
        """``copy_bases``, blocking (``bmsync resync``)."""
        if self._bases is not None:
            keep_bases(self.root, sent, self._bases)


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
        for path, entry in _wanted(sent, bases):
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


def _wanted(sent: Mapping[bytes, Entry | None], bases: BaseStore) -> Iterable[tuple[bytes, Entry]]:
    for path, entry in sent.items():
        if (
            entry is not None
            and entry.kind == Kind.FILE
            and bases.wanted(entry.size)
            and entry.digest not in bases
        ):
            yield path, entry
