"""Holding sync back: the delete-storm brake, a pause (by the brake or an
operator, kept across restarts until resumed), what the brake held back,
and ``resume --discard``, which restores the deleted files here from the
peer instead of propagating the deletions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog

from bmsync.config.model import Config
from bmsync.core.brake import DeleteBrake, synced_files
from bmsync.core.errors import BmsyncError
from bmsync.core.manifest import Entry
from bmsync.core.ops import Delete, Op, PutFile, Rename
from bmsync.core.paths import show
from bmsync.core.planner import plan
from bmsync.fs.confine import Confined
from bmsync.fs.scan import scan_tree
from bmsync.fs.tree_writer import TreeWriter
from bmsync.link.session import PeerSession
from bmsync.sender.status import Stats
from bmsync.state.lock import SenderLock
from bmsync.state.records import Pause, PauseFlag

log = structlog.get_logger("bmsync.daemon")

STORM = "delete storm"  # how a pause by the brake starts


class Hold:
    """Whether sync is paused, and why; what the brake held back. As the
    pipeline's ``Brake``, it checks each batch (``sent`` counts the
    deletions in the brake's window); ``for_reconcile`` checks a
    reconcile's passes without counting them."""

    def __init__(
        self,
        config: Config,
        stats: Stats,
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self.config = config
        self._stats = stats
        self._clock = clock
        self._wall = wall
        self._pause_flag = PauseFlag(config.state_dir)
        paused = self._pause_flag.load()
        self.paused_reason: str | None = None if paused is None else paused.reason
        self.held: dict[bytes, bool] = {}  # a batch the brake stopped
        self.held_since: float | None = None
        self._brake = DeleteBrake(config.brake_limits())
        self._released = False  # the next plan goes through (resume, --allow-deletes)

    def reload(self, config: Config) -> None:
        self.config = config
        self._brake = DeleteBrake(config.brake_limits())

    @property
    def storm(self) -> bool:
        """Paused by the brake."""
        return self.paused_reason is not None and self.paused_reason.startswith(STORM)

    # -- the brake ------------------------------------------------------------------

    def release(self) -> None:
        """The next plan goes through whatever it deletes."""
        self._released = True

    def check(self, deletes: int, peer: Mapping[bytes, Entry]) -> str | None:
        if self._released:
            self._released = False
            return None
        return self._brake.check(deletes, synced_files(peer), self._clock())

    def sent(self, deletes: int) -> None:
        self._brake.record(deletes, self._clock())

    def for_reconcile(self) -> _Unrecorded:
        return _Unrecorded(self)

    # -- pause / resume ---------------------------------------------------------------

    def pause(self, reason: str, held: dict[bytes, bool]) -> None:
        """Stop sending (changes queue); kept across restarts until resumed."""
        if self.paused_reason is None or self.paused_reason != reason:
            self._pause_flag.save(Pause(reason, self._wall()))
        self.paused_reason = reason
        if held and self.held_since is None:
            self.held_since = self._clock()
        self.held.update(held)
        log.warning("sync_paused", reason=reason, held=len(self.held))

    def resume(self, release: bool = True) -> tuple[dict[bytes, bool], bool]:
        """Go on syncing; ``release``: propagate what the brake held back
        (the operator said the deletions are wanted). Returns the paths
        held back (to queue again), and whether a reconcile must run (the
        storm was found by one)."""
        held, self.held = self.held, {}
        self.held_since = None
        reconcile = False
        if self.storm:
            self._brake.reset()
            self._released = release
            reconcile = not held
        self.paused_reason = None
        self._pause_flag.clear()
        log.info("sync_resumed", released=len(held))
        return held, reconcile

    def blocked(self) -> tuple[str | None, float | None, list[str]]:
        """The pause, since when (wall clock), and what clears it."""
        pause = self._pause_flag.load()
        if self.storm:
            clears = [
                "'bmsync resume' if the deletions are wanted (they are sent to the peer)",
                "'bmsync resume --discard' if not (the files are restored here from the peer)",
            ]
        else:
            clears = ["'bmsync resume'"]
        return self.paused_reason, None if pause is None else pause.since, clears

    def _error(self, message: str) -> None:
        self._stats.error(message)

    async def restore_held(
        self, session: PeerSession | None, state: str, peer: Mapping[bytes, Entry]
    ) -> dict[str, Any]:
        """``resume --discard``: put back onto this node every path the peer
        has (as acknowledged) and this node lost, from the peer's copies;
        nothing here is deleted or overwritten. The deletions are undone
        instead of propagated."""
        if self.paused_reason is None or not self.paused_reason.startswith("delete storm"):
            raise BmsyncError("--discard undoes a delete storm, and none is held back")
        if session is None or session.peer is None:
            raise BmsyncError(f"not connected to the peer ({state}); try again later")
        root = self.config.sync.root
        syncset = self.config.syncset()
        here = scan_tree(root, syncset).entries
        wanted = {**{p: e for p, e in peer.items() if p not in here}, **here}
        ops: list[Op] = [
            PutFile(op.dst, op.entry) if isinstance(op, Rename) else op
            for op in plan(wanted, here)
            if not isinstance(op, Delete)
        ]
        lock = SenderLock(self.config.state_dir)  # one writer in this tree at a time
        try:
            try:
                lock.acquire(f"{self.config.node} resume --discard")
                where = Confined(root, syncset)
            except (BmsyncError, OSError) as exc:
                raise BmsyncError(f"cannot write to this node's own tree: {exc}") from exc
            writer = TreeWriter(where)
            try:
                for op in ops:
                    if isinstance(op, PutFile):
                        for frame in await session.fetch(op.path):
                            writer.receive(frame)
                    else:
                        writer.apply(op)
                applied = writer.commit(0)
            finally:
                writer.drop()
                where.close()
        finally:
            lock.release()
        for failure in applied.failures:
            self._error(f"restoring {show(failure.path)}: {failure.reason}")
        log.warning("storm_discarded", restored=len(ops), failures=len(applied.failures))
        return {
            "restored": len(ops),
            "failures": [{"path": show(f.path), "reason": f.reason} for f in applied.failures],
        }


class _Unrecorded:
    """The brake as a reconcile meets it: checked, its deletions not
    counted in the window (as before the split)."""

    def __init__(self, hold: Hold) -> None:
        self._hold = hold

    def check(self, deletes: int, peer: Mapping[bytes, Entry]) -> str | None:
        return self._hold.check(deletes, peer)

    def sent(self, deletes: int) -> None:
        pass
