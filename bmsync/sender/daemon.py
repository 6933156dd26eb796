"""``bmsync run``: the real-time sync daemon on the active node.

Wiring (README, "How it works")::

    inotify (watchdog thread) -> one hand-over per drain -> Batcher
    -> scan the batch's paths -> plan against the peer's acknowledged
    manifest -> delete-storm brake -> pipelined apply over one SSH session
    -> acknowledged results recorded (memory + journal on disk)

The scan is the truth, events are hints: on start, after every reconnect,
after an inotify overflow and on request, the daemon runs the same
reconcile as ``bmsync resync``. Changes made while it was stopped or
disconnected are found by that reconcile; changes made while a reconcile
runs are queued by the watcher, which starts first.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import random
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from bmsync.config import parse as config_module
from bmsync.config.model import Config, PeerConfig, VipConfig
from bmsync.core.batcher import Batch, Batcher
from bmsync.core.brake import DeleteBrake, lost_files, synced_files
from bmsync.core.errors import (
    BmsyncError,
    ConfigError,
    LocalFsError,
    NotActive,
    PeerUnreachable,
    SplitBrainSuspected,
    SyncPaused,
)
from bmsync.core.excludes import SyncSet
from bmsync.core.frames import (
    BASE_MISMATCH,
    Failure,
    Purpose,
)
from bmsync.core.guard import Guard, GuardState
from bmsync.core.manifest import Entry, Kind
from bmsync.core.observations import (
    ForcedResume,
    Observation,
    PeerLost,
    PeerWelcomed,
    RoleChanged,
    VipCheckFailed,
)
from bmsync.core.ops import Delete, Op, PutFile, Rename
from bmsync.core.paths import show
from bmsync.core.planner import plan
from bmsync.core.retries import Retries
from bmsync.core.roles import NodeRole, Role, Stamp
from bmsync.core.tree import ManifestTree, plan_changes
from bmsync.fs.bases import BaseStore
from bmsync.fs.confine import Confined
from bmsync.fs.digests import DigestCache
from bmsync.fs.files import open_root, release_free_memory
from bmsync.fs.scan import LinkGroups, Scan, UnsupportedFiles, scan_paths, scan_tree
from bmsync.fs.tree_writer import TreeWriter
from bmsync.ha.vip import Runner, observe_vip, run_command
from bmsync.link.session import PeerSession
from bmsync.link.ssh import FrameChannel
from bmsync.link.ssh import connect as ssh_connect
from bmsync.sender.events import Change
from bmsync.sender.reconcile import Expected, acknowledged_in, base_finder, keep_bases, resync
from bmsync.sender.watch import Watcher
from bmsync.service.control import ControlServer
from bmsync.service.notify import Notifier
from bmsync.state.directory import ensure_state_dir
from bmsync.state.journal import ManifestStore
from bmsync.state.lock import SenderLock
from bmsync.state.records import BackupLog, KeptCopy, Pause, PauseFlag
from bmsync.state.roles import RoleStore, require_active

log = structlog.get_logger("bmsync.daemon")

Connect = Callable[[PeerConfig], Awaitable[FrameChannel]]
# Errors kept for `bmsync status`.
ERRORS_KEPT = 10
# A batch this large (bytes of files read, or operations) leaves freed
# buffers behind; they go back to the system when the daemon is next idle.
TRIM_AFTER_BYTES = 1 << 20
TRIM_AFTER_OPS = 1000
# A batch with more paths than this, or a whole subtree, is scanned in a
# worker thread (the loop goes on answering); a smaller one on the loop, at
# once (latency).
SCAN_ON_LOOP_MAX = 64
# How long `bmsync demote` waits for the batch in flight before answering.
DEMOTE_WAIT_S = 30.0
# How long the first session waits for the first VIP check (arping: 2 s).
FIRST_VIP_CHECK_WAIT_S = 10.0


class State(enum.StrEnum):
    """The ``state`` of ``bmsync status`` (a public contract)."""

    RECONCILING = "reconciling"
    SYNCING = "syncing"
    DEGRADED = "degraded"  # connected, but some paths fail on the peer (retried)
    PAUSED = "paused"
    DISCONNECTED = "disconnected"
    SUSPENDED = "suspended"  # the guard: a split-brain is suspected
    MAINTENANCE = "maintenance"
    STOPPED = "stopped"


@dataclass
class Stats:
    files_sent: int = 0
    bytes_sent: int = 0
    batches: int = 0
    last_sync: float | None = None  # wall clock
    last_contact: float | None = None
    last_batch: dict[str, Any] | None = None
    errors: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=ERRORS_KEPT))
    error_count: int = 0


class _LinkLost(Exception):
    pass


class _Suspended(Exception):
    """The guard forbids sending: wait for evidence, retrying the handshake."""


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        connect: Connect = ssh_connect,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        run: Runner = run_command,
    ) -> None:
        self.config = config
        self._connect_channel = connect
        self._notifier = notifier or Notifier({})
        self._clock = clock
        self._wall = wall
        self._rng = rng
        self._run = run
        self._vip_checked = asyncio.Event()  # the guard has had a VIP observation
        self._unsupported = UnsupportedFiles()  # FIFOs and the like: listed by status
        self._links = LinkGroups()  # a change through one name of a file is through all
        self.stats = Stats()
        # files changed on the passive node since bmsync wrote them
        self._backups = BackupLog(config.state_dir)
        self._pause_flag = PauseFlag(config.state_dir)
        paused = self._pause_flag.load()
        self.paused_reason: str | None = None if paused is None else paused.reason
        # facts the state is derived from (see ``state``)
        self._connected = False  # a session is open and the guard lets us send
        self._reconciling = False
        self._stopped = False
        self._told_systemd = ""
        self._held: dict[bytes, bool] = {}  # a batch the brake stopped
        self._held_since: float | None = None
        self._brake_released = False
        self._batcher = self._new_batcher()
        self._brake = DeleteBrake(self.config.brake_limits())
        self._retries = Retries()  # paths the peer failed to apply
        self._peer = ManifestTree()
        self._store = ManifestStore(config.state_dir)
        self._digests = DigestCache(config.state_dir)
        self._bases = BaseStore.in_state_dir(config.state_dir, config.sync.delta_cache_mb)
        # copying a reconcile's delta bases, in a worker thread after it
        self._bases_copy: asyncio.Future[None] | None = None
        self._session: PeerSession | None = None
        self._watcher: Watcher | None = None
        self._watches_fresh = False  # set up since the last reconcile
        self._trim_pending = False  # large buffers freed since the last idle
        self._stored: asyncio.Future[tuple[str, bytes] | None] | None = None
        self._peer_node = ""  # whose manifest self._peer is
        self._roles = RoleStore(config.state_dir, config.node)
        self._role_version = self._roles.version()
        self._guard = Guard.starting(
            self._roles.load(), wall(), vip_configured=config.ha.vip is not None
        )
        self._peer_role: Role | None = None
        self._peer_epoch: int | None = None
        self._control = ControlServer(config.control_socket, self._on_control)
        self._wake = asyncio.Event()
        self._retry = asyncio.Event()  # a role change or a resume: ask the peer now
        self._stopping = asyncio.Event()
        self._sending_stopped = asyncio.Event()  # the session is closed for good
        self._reconcile_wanted = True
        self._resync_waiters: list[asyncio.Future[dict[str, Any]]] = []
        self._inflight_oldest: float | None = None
        self._started_wall = wall()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def state(self) -> State:
        """Derived from what is true, never set by a step of the loop."""
        if self._stopped:
            return State.STOPPED
        if self._guard.state is GuardState.MAINTENANCE:
            return State.MAINTENANCE
        if self._guard.state is GuardState.SUSPENDED:
            return State.SUSPENDED
        if self.paused_reason is not None:
            return State.PAUSED
        if not self._connected:
            return State.DISCONNECTED
        if self._retries:
            return State.DEGRADED
        return State.RECONCILING if self._reconciling else State.SYNCING

    def _tell_systemd(self, detail: str = "") -> None:
        """One STATUS= line per change of state (``systemctl status``)."""
        state = self.state
        if state is State.SUSPENDED or state is State.MAINTENANCE:
            detail = self._guard.reason or ""
        elif state is State.PAUSED or state is State.DEGRADED:
            detail = self._blocked()[0] or ""
        elif state in (State.SYNCING, State.RECONCILING) and self.config.peer is not None:
            detail = f"to {self.config.peer.host}"
        line = f"{state}: {detail}" if detail else str(state)
        if line != self._told_systemd:
            self._told_systemd = line
            self._notifier.status(line)

    # -- configuration -------------------------------------------------------

    def _new_batcher(self) -> Batcher:
        sync = self.config.sync
        return Batcher(sync.batch_window_ms / 1000, sync.max_delay_ms / 1000)

    def reload(self) -> None:
        """SIGHUP: re-read the configuration; a bad one keeps the old."""
        try:
            new = config_module.load(self.config.source)
        except ConfigError as exc:
            self._error(f"configuration not reloaded, keeping the old one: {exc}")
            return
        old, self.config = self.config, new
        self._brake = DeleteBrake(self.config.brake_limits())
        log.info("config_reloaded", path=str(new.source))
        if new.peer != old.peer or new.node != old.node:
            self._drop_session()
        self._restart_watcher()
        self._request_reconcile()

    # -- events from the watcher (on the loop) --------------------------------

    def _on_change(self, changes: list[Change]) -> None:
        now = self._clock()
        for path, settled, deep, delete in changes:
            self._batcher.add(path, now, settled=settled, deep=deep, delete=delete)
        if self._batcher.queued > self.config.sync.queue_limit:
            # bounded while the peer is away: the full reconcile finds it all
            log.warning("queue_full", limit=self.config.sync.queue_limit)
            self._batcher.rescan(now)
        self._wake.set()

    def _on_lost(self, reason: str) -> None:
        """Events were lost: the batcher's rescan (counted in the lag until
        the reconcile has run) replaces whatever it had queued."""
        log.warning("events_lost", reason=reason)
        self._watches_fresh = False  # the reconcile re-creates them before it scans
        self._batcher.rescan(self._clock())
        self._wake.set()

    def _request_reconcile(self) -> None:
        self._reconcile_wanted = True
        self._wake.set()

    # -- running ---------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        ensure_state_dir(self.config.state_dir)
        require_active(self._guard.role)
        await self._control.start()
        for signum, handler in (
            (signal.SIGTERM, self.stop),
            (signal.SIGINT, self.stop),
            (signal.SIGHUP, self.reload),
        ):
            loop.add_signal_handler(signum, handler)
        self._restart_watcher()
        # the stored manifest's digest, worked out while SSH connects
        self._stored = asyncio.ensure_future(asyncio.to_thread(self._stored_digest))
        if self._notifier.watchdog_interval_s is not None:
            self._spawn(self._watchdog_pings(self._notifier.watchdog_interval_s))
        if self.config.ha.vip is not None:
            self._spawn(self._watch_vip(self.config.ha.vip))
        log.info("daemon_started", node=self.config.node, pid=os.getpid())
        # Up and watching: every change from now on is kept. The peer's
        # state is STATUS= and `bmsync status`, never a reason to hold the
        # start (the peer is down exactly when a failover happened).
        self._notifier.ready(f"watching; {self.state}")
        self._told_systemd = f"watching; {self.state}"
        try:
            await self._main()
        finally:
            self._notifier.stopping()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            await self._close_session()
            self._stopped = True
            self._sending_stopped.set()
            self._answer_resyncs(
                PeerUnreachable("the daemon stopped before the resync ran; nothing more was sent")
            )
            await self._bases_copied()
            if self._watcher is not None:
                self._watcher.stop()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._control.close()
            if self._store.has_journal() and self._peer_node:
                # the next start then confirms the peer from the header alone
                self._store.replace(self._peer_node, self._peer.as_dict())
            self._store.close()
            self._notifier.close()
            log.info("daemon_stopped")
        return 0

    def stop(self) -> None:
        """SIGTERM: finish the batch in flight, then exit."""
        log.info("stop_requested")
        self._stopping.set()
        self._wake.set()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_vip(self, vip: VipConfig) -> None:
        """The guard's VIP observations, every ``check_interval_s``. A check
        that cannot run suspends sync (fail closed) until one works again;
        a reload that fixes ``ha.vip`` takes effect at the next check."""
        failed: str | None = None  # the last check's failure, logged once
        while True:
            vip = self.config.ha.vip or vip  # removing it takes a restart
            seen = await observe_vip(vip, self._run)
            if isinstance(seen, VipCheckFailed) and seen.reason != failed:
                self._error(f"VIP check: {seen.reason}")
            failed = seen.reason if isinstance(seen, VipCheckFailed) else None
            self._observe(seen)
            self._vip_checked.set()
            self._wake.set()
            await asyncio.sleep(vip.check_interval_s)

    async def _first_vip_check(self) -> None:
        """No write before the guard has checked the VIP once. The first
        check (arping listens for up to 2 s) runs while SSH connects; if it
        has not answered in time, the guard's "not checked yet" holds."""
        if self._guard.vip_configured:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._vip_checked.wait(), FIRST_VIP_CHECK_WAIT_S)

    async def _watchdog_pings(self, interval_s: float) -> None:
        while True:
            self._notifier.ping()
            await asyncio.sleep(interval_s)

    def _restart_watcher(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        self._watcher = Watcher(
            self.config.sync.root,
            self.config.syncset(),
            asyncio.get_running_loop(),
            self._on_change,
            self._on_lost,
        )
        self._watcher.start()
        self._watches_fresh = True

    async def _main(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                self._check_role()
                session = await self._open_session()
                attempt = 0
                await self._serve(session)
            except (SplitBrainSuspected, _Suspended) as exc:
                self._retry.clear()
                await self._close_session()
                if isinstance(exc, SplitBrainSuspected):
                    self._refused(exc)
                if self._stopping.is_set():
                    break
                self._tell_systemd()
                # ask again now and then (or at once after a role change):
                # the peer may have been demoted
                await self._sleep(self.config.require_peer().reconnect_max_s)
                self._reconcile_wanted = True
            except (BmsyncError, _LinkLost) as exc:
                self._retry.clear()
                await self._close_session()
                if self._stopping.is_set():
                    break
                self._error(f"peer link: {exc}")
                self._observe(PeerLost(str(exc)))  # not a suspicion: roles were not compared
                self._tell_systemd(f"{exc}")
                peer = self.config.require_peer()
                delay = min(peer.reconnect_max_s, peer.reconnect_min_s * 2**attempt)
                delay *= 0.5 + self._rng() / 2  # jitter: two daemons never retry in step
                attempt += 1
                log.info("reconnect_wait", seconds=round(delay, 3), attempt=attempt)
                await self._sleep(delay)
                self._reconcile_wanted = True

    def _refused(self, exc: SplitBrainSuspected) -> None:
        """The peer refused us, at the handshake or in the middle of a
        session (it was promoted, or saw a higher stamp): suspend."""
        self.stats.last_contact = self._wall()
        self._peer_role, self._peer_epoch = exc.refusal.role, None
        self._observe(exc.refusal)
        self._error(f"peer refused: {exc}")

    async def _sleep(self, seconds: float) -> None:
        """Until ``seconds`` pass, the daemon stops, or ``_retry`` is set."""
        waits = [
            asyncio.ensure_future(self._stopping.wait()),
            asyncio.ensure_future(self._retry.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    def _check_role(self) -> None:
        """Pick up a change of role.json made by another command (promote,
        demote) even if its message to the control socket was lost."""
        version = self._roles.version()
        if version == self._role_version:
            return
        self._role_version = version
        role = self._roles.load()
        if role != self._guard.role:
            self._role_changed(role)

    def _role_changed(self, role: NodeRole) -> None:
        self._observe(RoleChanged(role))
        if role.role is not Role.ACTIVE:
            log.warning("demoted", epoch=role.epoch)
            self.stop()
        self._retry.set()
        self._wake.set()

    async def _open_session(self) -> PeerSession:
        peer = self.config.require_peer()
        channel = await self._connect_channel(peer)
        me = self._guard.role
        session = PeerSession(
            channel, self.config.node, me.epoch, me.role, max_entries=self.config.sync.max_entries
        )
        self._session = session
        welcome = await session.open(Purpose.WRITE)
        self.stats.last_contact = self._wall()
        self._peer_role, self._peer_epoch = welcome.role, welcome.epoch
        self._observe(PeerWelcomed(welcome.node, Stamp(welcome.seen_epoch, welcome.seen_node)))
        await self._first_vip_check()
        if not self._guard.may_send:
            raise _Suspended(self._guard.reason or "the guard forbids sending")
        self._connected = True
        return session

    def _observe(self, observation: Observation) -> None:
        """Feed the guard; log each transition with its evidence; persist
        a higher stamp seen (fsynced) before acting on it."""
        before = self._guard.role
        for change in self._guard.observe(observation, self._wall()):
            log.warning(
                "guard",
                old=str(change.old),
                new=str(change.new),
                reason=change.reason,
                evidence=change.evidence,
            )
            if change.new is GuardState.SYNCING:
                self._retry.set()  # a suspended daemon asks its peer now, not later
        seen = self._guard.role.highest_seen
        if seen != before.highest_seen:
            # merged with the file, under its lock: an operator's demote
            # written meanwhile is kept, not overwritten with our old view
            disk = self._roles.update(lambda role: role.saw(seen), f"saw {seen}")
            self._role_version = self._roles.version()
            if disk != self._guard.role:
                self._role_changed(disk)

    def _drop_session(self) -> None:
        if self._session is not None:
            self._spawn(self._close_session())
        self._wake.set()

    async def _close_session(self) -> None:
        self._connected = False
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(BmsyncError, OSError):
                await session.close()

    async def _serve(self, session: PeerSession) -> None:
        """Sync until stopped; raises when the link is lost."""
        lost = asyncio.ensure_future(session.wait_lost())
        lost.add_done_callback(lambda _: self._wake.set())
        try:
            while not self._stopping.is_set():
                if lost.done() or self._session is not session:
                    if lost.done():
                        await session.why_lost()  # a refusal mid-session, if it said so
                    raise _LinkLost("the SSH session to the agent ended")
                self._check_role()
                if not self._guard.may_send:
                    raise _Suspended(self._guard.reason or "the guard forbids sending")
                if self.paused_reason is not None:  # no writes at all, not even a reconcile
                    await self._idle(None)
                    continue
                if self._reconcile_wanted:
                    await self._reconcile(session)
                    continue
                now = self._clock()
                for path in self._retries.take_due(now):
                    self._batcher.add(path, now, settled=True, deep=True)
                deadlines = [self._batcher.next_deadline(), self._retries.next_due()]
                deadline = min((d for d in deadlines if d is not None), default=None)
                if deadline is None or deadline > now:
                    await self._idle(None if deadline is None else deadline - now)
                    continue
                batch = self._batcher.take(now)
                if batch is None:
                    continue
                if batch.rescan:
                    self._reconcile_wanted = True
                    continue
                await self._apply(session, batch)
        finally:
            lost.cancel()

    async def _idle(self, timeout_s: float | None) -> None:
        self._wake.clear()  # before any await: a wake-up from then on counts
        if self._trim_pending and timeout_s is None:
            await self._bases_copied()  # its buffers are freed too
            self._trim_pending = False
            release_free_memory()
        self._tell_systemd()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)

    # -- reconcile ---------------------------------------------------------------

    async def _reconcile(self, session: PeerSession) -> None:
        self._reconcile_wanted = False
        self._trim_pending = True
        self._reconciling = True
        self._tell_systemd()
        try:
            await self._reconcile_now(session)
        except BaseException as exc:
            self._answer_resyncs(exc)
            raise
        finally:
            self._reconciling = False

    def _answer_resyncs(self, outcome: dict[str, Any] | BaseException) -> None:
        """Answer every `bmsync resync` waiting on this reconcile."""
        waiters, self._resync_waiters = self._resync_waiters, []
        for waiter in waiters:
            if waiter.done():
                continue
            if isinstance(outcome, BmsyncError):
                waiter.set_exception(outcome)
            elif isinstance(outcome, BaseException):
                waiter.set_exception(
                    PeerUnreachable(f"the reconcile was interrupted ({outcome or 'link lost'})")
                )
            else:
                waiter.set_result(outcome)

    async def _reconcile_now(self, session: PeerSession) -> None:
        # Events from now on are kept; older queued ones are covered by this scan.
        self._batcher = self._new_batcher()
        if self._watcher is not None and not self._watches_fresh:
            # a worker thread: re-adding every watch of a large tree, while
            # the old observer's threads end, takes a while
            await asyncio.to_thread(self._watcher.refresh)
        self._watches_fresh = False
        started = self._clock()
        peer_node = session.peer.node if session.peer else ""
        self._peer_node = peer_node
        known = len(self._peer) > 0
        await self._bases_copied()
        report = await resync(
            session,
            self.config.sync.root,
            self.config.syncset(),
            guard=self._guard_reconcile,
            delta_bases=self._bases,
            digests=self._digests,
            expected=await self._expected_peer(peer_node),
            stopping=self._stopping.is_set,
        )
        self._copy_bases(report.sent)
        if not (report.peer_unchanged and known):
            self._peer = ManifestTree.owning(report.peer)
        if not report.peer_unchanged:
            self._store.replace(peer_node, report.peer)
        self.stats.last_contact = self._wall()
        self._kept(report.backups)
        self.stats.files_sent += report.files_sent
        self.stats.bytes_sent += report.bytes_sent
        if report.converged and not report.failures:
            self._retries.clear()
        else:
            self._failures_retried(report.failures, landed=report.sent)
        for path, reason in report.local_problems:
            self._error(f"{show(path)}: {reason}")
        self._unsupported.update(report.unsupported)
        self._links.replace(report.links)
        if report.halted is not None:
            self._pause(report.halted, held={})
        elif report.converged:
            self.stats.last_sync = self._wall()
        log.info(
            "reconciled",
            ops=report.ops_applied,
            files=report.files_sent,
            bytes=report.bytes_sent,
            converged=report.converged,
            duration_ms=round((self._clock() - started) * 1000, 1),
        )
        answer = {
            "ok": report.halted is None and not report.failures,
            "converged": report.converged,
            "ops_applied": report.ops_applied,
            "files_sent": report.files_sent,
            "bytes_sent": report.bytes_sent,
            "failures": [{"path": show(f.path), "reason": f.reason} for f in report.failures],
            "halted": report.halted,
        }
        self._answer_resyncs(answer)

    def _copy_bases(self, sent: Mapping[bytes, Entry | None]) -> None:
        """Keep the delta bases of what the peer now holds, in a worker
        thread: the batch (or "syncing") need not wait for the copies."""
        if any(e is not None and BaseStore.wanted(e.size) for e in sent.values()):
            self._trim_pending = True
            self._bases_copy = asyncio.ensure_future(
                asyncio.to_thread(keep_bases, self.config.sync.root, dict(sent), self._bases)
            )

    async def _bases_copied(self) -> None:
        """Wait for the delta bases a reconcile left to copy: the store is
        used by one thread at a time."""
        copying, self._bases_copy = self._bases_copy, None
        if copying is None:
            return
        try:
            await copying
        except OSError as exc:  # costs bandwidth later, never correctness
            log.warning("delta_bases_not_kept", error=str(exc))

    def _kept(self, backups: list[tuple[bytes, str]]) -> None:
        for path, kept in backups:
            log.warning("passive_copy_kept", path=show(path), kept=kept)
        self._backups.add([KeptCopy(self._wall(), show(path), kept) for path, kept in backups])

    async def _expected_peer(self, peer_node: str) -> Expected | None:
        """What the peer should hold: the agent confirms it with one digest
        instead of sending every entry."""
        if len(self._peer) > 0:
            tree = self._peer
            return Expected(tree.digest(), tree.as_dict)
        stored, self._stored = self._stored, None
        found = None if stored is None else await stored
        if found is None or found[0] != peer_node:
            return None
        return Expected(found[1], lambda: self._store.load(peer_node))

    def _stored_digest(self) -> tuple[str, bytes] | None:
        found = self._store.stored_digest()
        release_free_memory()  # after a crash it decoded every entry; the scan comes next
        return found

    def _guard_reconcile(self, ops: list[Op], peer: Mapping[bytes, Entry]) -> str | None:
        if self._brake_released:
            self._brake_released = False
            return None
        return self._brake.check(lost_files(ops, peer), synced_files(peer), self._clock())

    # -- batches -------------------------------------------------------------------

    async def _apply(self, session: PeerSession, batch: Batch) -> None:
        started = self._clock()
        await self._bases_copied()
        self._inflight_oldest = batch.oldest_s
        changed = dict(batch.paths)
        try:
            root_fd = open_root(self.config.sync.root)
        except OSError as exc:
            raise LocalFsError(f"cannot open sync root {self.config.sync.root}: {exc}") from exc
        try:
            syncset = self.config.syncset()
            scan = await _scan_paths(root_fd, syncset, changed)
            wider = {
                p: True
                for p, deep in changed.items()
                if not deep
                and (here := scan.entries.get(p)) is not None
                and here.kind == Kind.DIR
                and (p not in self._peer or self._peer[p].kind != Kind.DIR)
            }
            if wider:  # a directory the peer lacks: take all of it
                changed.update(wider)
                _merge(scan, await _scan_paths(root_fd, syncset, wider))
            self._links.update(scan.links, scanned=[*changed, *scan.entries])
            siblings = {o: False for p in changed for o in self._links.others(p)}
            siblings = {p: deep for p, deep in siblings.items() if p not in changed}
            if siblings:  # the other names of a file changed through one of them
                changed.update(siblings)
                _merge(scan, await _scan_paths(root_fd, syncset, siblings))
            self._unsupported.update(scan.unsupported, scanned=changed)
            for path, reason in scan.problems:
                self._error(f"{show(path)}: {reason}")
                changed.pop(path, None)
            for path in scan.unsupported:
                changed.pop(path, None)
            ops = plan_changes(scan.entries, self._peer, changed)
            if not ops:
                for path in changed:  # a retried path found in sync meanwhile
                    self._retries.landed(path)
                return
            deletes = lost_files(ops, self._peer)
            now = self._clock()
            if self._brake_released:
                self._brake_released = False
            elif (storm := self._brake.check(deletes, synced_files(self._peer), now)) is not None:
                self._pause(storm, held=changed)
                return
            outcome = await session.apply(
                ops,
                root_fd,
                delta_base=base_finder(self._peer, self._bases),
                acknowledged=acknowledged_in(self._peer),
            )
        except BaseException:
            # not acknowledged (the link died under it): queued again, and
            # still as old as it was
            self._batcher.requeue(batch)
            raise
        finally:
            os.close(root_fd)
            self._inflight_oldest = None
        self._brake.record(deletes, self._clock())
        self._kept(outcome.backups)
        read = sum(op.entry.size for op in ops if isinstance(op, PutFile))
        if read >= TRIM_AFTER_BYTES or len(ops) >= TRIM_AFTER_OPS:
            self._trim_pending = True
        self._copy_bases(outcome.results)
        for path, entry in outcome.results.items():
            self._peer.set(path, entry)
        self._store.record(list(outcome.results.items()))
        if self._store.needs_compaction():
            self._store.replace(session.peer.node if session.peer else "", self._peer.as_dict())
        for path in outcome.changing:
            self._batcher.add(path, self._clock(), settled=False)
        stale = [f.path for f in outcome.failures if f.code == BASE_MISMATCH]
        for path in stale:  # the peer's copy was not our base: send it whole, now
            log.info("delta_base_stale", path=show(path))
            self._batcher.add(path, self._clock(), settled=True)
        self._failures_retried(outcome.failures, landed=changed)
        duration_ms = round((self._clock() - started) * 1000, 2)
        self.stats.batches += 1
        self.stats.files_sent += outcome.files_sent
        self.stats.bytes_sent += outcome.bytes_sent
        self.stats.last_sync = self.stats.last_contact = self._wall()
        self.stats.last_batch = {
            "paths": len(changed),
            "ops": len(ops),
            "bytes": outcome.bytes_sent,
            "deltas": outcome.deltas,
            "duration_ms": duration_ms,
            "failures": len(outcome.failures),
        }
        log.info(
            "batch_applied",
            paths=len(changed),
            ops=len(ops),
            bytes=outcome.bytes_sent,
            duration_ms=duration_ms,
            failures=len(outcome.failures),
        )

    def _failures_retried(self, failures: list[Failure], landed: Iterable[bytes]) -> None:
        """Paths the peer failed to apply are tried again with backoff until
        they land, whatever pass failed them; ``landed``: the other paths
        of that pass, applied (or found in sync)."""
        failed = {f.path for f in failures if f.code != BASE_MISMATCH}
        for path in landed:
            if path not in failed:
                self._retries.landed(path)
        now = self._clock()
        for failure in failures:
            if failure.code != BASE_MISMATCH:
                self._error(f"{show(failure.path)}: {failure.reason}")
                self._retries.failed(failure.path, failure.reason, now)

    # -- pause / resume ------------------------------------------------------------

    def _pause(self, reason: str, held: dict[bytes, bool]) -> None:
        """Stop sending (changes queue); kept across restarts until resumed."""
        if self.paused_reason is None or self.paused_reason != reason:
            self._pause_flag.save(Pause(reason, self._wall()))
        self.paused_reason = reason
        if held and self._held_since is None:
            self._held_since = self._clock()
        self._held.update(held)
        self._tell_systemd()
        log.warning("sync_paused", reason=reason, held=len(self._held))

    def _resume(self, release: bool = True) -> None:
        """Go on syncing; ``release``: propagate what the brake held back
        (the operator said the deletions are wanted)."""
        held, self._held = self._held, {}
        self._held_since = None
        now = self._clock()
        for path, deep in held.items():
            self._batcher.add(path, now, settled=True, deep=deep)
        if self.paused_reason is not None and self.paused_reason.startswith("delete storm"):
            self._brake.reset()
            self._brake_released = release
            if not held:  # the storm was found by a reconcile
                self._reconcile_wanted = True
        self.paused_reason = None
        self._pause_flag.clear()
        log.info("sync_resumed", released=len(held))
        self._tell_systemd()
        self._retry.set()
        self._wake.set()

    async def _restore_held(self) -> dict[str, Any]:
        """``resume --discard``: put back onto this node every path the peer
        has (as acknowledged) and this node lost, from the peer's copies;
        nothing here is deleted or overwritten. The deletions are undone
        instead of propagated."""
        session = self._session
        if self.paused_reason is None or not self.paused_reason.startswith("delete storm"):
            raise BmsyncError("--discard undoes a delete storm, and none is held back")
        if session is None or session.peer is None:
            raise BmsyncError(f"not connected to the peer ({self.state}); try again later")
        root = self.config.sync.root
        syncset = self.config.syncset()
        here = scan_tree(root, syncset).entries
        wanted = {**{p: e for p, e in self._peer.items() if p not in here}, **here}
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

    # -- status and control ----------------------------------------------------------

    def _error(self, message: str) -> None:
        log.error("sync_error", error=message)
        self.stats.errors.append((self._wall(), message))
        self.stats.error_count += 1

    def status(self) -> dict[str, Any]:
        now = self._clock()
        oldest = [
            t
            for t in (
                self._batcher.oldest(),
                self._inflight_oldest,
                self._held_since,
                self._retries.oldest(),
            )
            if t is not None
        ]
        peer = self.config.peer
        return {
            "state": str(self.state),
            "node": self.config.node,
            "peer": None if peer is None else f"{peer.user}@{peer.host}:{peer.port}",
            "pid": os.getpid(),
            "started": _iso(self._started_wall),
            "last_contact": _iso(self.stats.last_contact),
            "last_sync": _iso(self.stats.last_sync),
            "last_batch": self.stats.last_batch,
            "lag_s": round(now - min(oldest), 3) if oldest else 0.0,
            "queued": self._batcher.queued + len(self._held) + self._retries.waiting,
            "files_sent": self.stats.files_sent,
            "bytes_sent": self.stats.bytes_sent,
            "batches": self.stats.batches,
            "paused_reason": self.paused_reason,
            "errors": [{"time": _iso(t), "message": m} for t, m in self.stats.errors],
            "error_count": self.stats.error_count,
            "backups": [
                {"time": _iso(b.time), "path": b.path, "kept": b.kept} for b in self._backups.recent
            ],
            "backup_count": self._backups.count,
            "unsupported": self._unsupported.paths(),
            **self._guard_status(),
        }

    def _blocked(self) -> tuple[str | None, float | None, list[str]]:
        """Why nothing is sent (the guard first, then a pause), since when
        (wall clock), and what clears it."""
        guard = self._guard
        if guard.state is not GuardState.SYNCING:
            return guard.reason, guard.since, guard.clears
        if self.paused_reason is None:
            first = self._retries.first()
            if first is None:
                return None, None, []
            path, why = first
            return (
                f"{len(self._retries)} path(s) not applied on the peer (retried every "
                f"{self._retries.first_s:g} to {self._retries.max_s:g} s); first: {show(path)}: "
                f"{why}",
                None,
                [
                    "the cause fixed on the peer (disk space, permissions, immutable files...): "
                    "the next retry then lands; 'bmsync status' lists the errors"
                ],
            )
        pause = self._pause_flag.load()
        if self.paused_reason.startswith("delete storm"):
            clears = [
                "'bmsync resume' if the deletions are wanted (they are sent to the peer)",
                "'bmsync resume --discard' if not (the files are restored here from the peer)",
            ]
        else:
            clears = ["'bmsync resume'"]
        return self.paused_reason, None if pause is None else pause.since, clears

    def _guard_status(self) -> dict[str, Any]:
        guard, me = self._guard, self._guard.role
        reason, since, clears = self._blocked()
        return {
            "role": str(me.role),
            "epoch": me.epoch,
            "highest_seen": {"epoch": me.highest_seen.epoch, "node": me.highest_seen.node},
            "peer_role": None if self._peer_role is None else str(self._peer_role),
            "peer_epoch": self._peer_epoch,
            "peer_seen": {"epoch": guard.peer_seen.epoch, "node": guard.peer_seen.node},
            "reason": reason,
            "since": _iso(since),
            "clears": clears,
            "forced": guard.forced_reason,
        }

    async def _on_control(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request["command"]
        if command == "status":
            return {"ok": True, **self.status()}
        if command == "pause":
            if self.paused_reason is not None:
                return self._answer(changed=False, reason=self.paused_reason)
            reason = str(request.get("reason") or "paused by an operator (bmsync pause)")
            self._pause(reason, held={})
            return self._answer(changed=True)
        if command == "resume" and request.get("force"):
            return self._force(str(request.get("reason") or ""))
        if command == "role":  # `bmsync promote` / `demote` changed the persisted role
            self._check_role()
            if self._stopping.is_set():
                # demoted: answer once nothing more is sent (the batch in
                # flight finished, the session closed)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._sending_stopped.wait(), DEMOTE_WAIT_S)
                return {"ok": True, "state": "stopped", "stopped": self._sending_stopped.is_set()}
            return self._answer(changed=True)
        if command == "resume":
            if self.paused_reason is None:
                return self._answer(changed=False)
            if request.get("discard"):
                restored = await self._restore_held()
                self._resume(release=False)
                self._request_reconcile()
                return self._answer(changed=True, **restored)
            self._resume()
            return self._answer(changed=True)
        if command == "resync":
            return await self._resync(bool(request.get("allow_deletes")))
        raise BmsyncError(f"unknown control command {command!r}")

    def _answer(self, changed: bool, **more: Any) -> dict[str, Any]:
        """A control answer: the state now, and what still stops sync."""
        reason, _, clears = self._blocked()
        return {
            "ok": True,
            "changed": changed,
            "state": str(self.state),
            "reason": reason,
            "clears": clears,
            **more,
        }

    def _force(self, reason: str) -> dict[str, Any]:
        """``resume --force``: clear the suspicions without evidence (never
        a stale node's: its peer refuses it anyway)."""
        if not reason:
            raise BmsyncError("'resume --force' needs '--reason \"...\"' (it is recorded)")
        if self._guard.state is not GuardState.SUSPENDED:
            return self._answer(changed=False)
        before = self._guard.suspicions
        self._observe(ForcedResume(reason))
        with self._roles.locked():
            self._roles.save(
                self._roles.load(), "resume --force", forced=f"{_iso(self._wall())} {reason}"
            )
        self._role_version = self._roles.version()
        log.warning("forced_resume", reason=reason, state=str(self._guard.state))
        self._retry.set()
        self._wake.set()
        return self._answer(changed=self._guard.suspicions != before)

    async def _resync(self, allow_deletes: bool) -> dict[str, Any]:
        """``bmsync resync`` through the daemon: the next reconcile's report."""
        if self._guard.state is not GuardState.SYNCING:
            raise NotActive(
                f"sync is {self.state} ({self._guard.reason}); cleared by: "
                + "; or ".join(self._guard.clears)
            )
        if self.paused_reason is not None:
            raise SyncPaused(
                f"sync is paused ({self.paused_reason}); nothing was sent. 'bmsync resume' "
                "sends again (after a delete storm: propagates the deletions; 'bmsync resume "
                "--discard' restores the files here instead)"
            )
        if self._session is None or not self._connected:
            raise PeerUnreachable(
                f"not connected to the peer ({self.state}); see 'bmsync status', and try again"
            )
        if allow_deletes:
            self._brake_released = True
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._resync_waiters.append(waiter)
        self._request_reconcile()
        return await waiter


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


def run_daemon(config: Config, environ: dict[str, str]) -> int:
    """``bmsync run``: the daemon until SIGTERM."""
    notifier = Notifier(environ)
    daemon = Daemon(config, notifier=notifier)
    return asyncio.run(daemon.run())
