"""``bmsync run``: the real-time sync daemon, on both nodes.

On the active node it syncs; on the passive one it stands by (state
``standby``: nothing watched, nothing sent) until a promotion, after which
it syncs from there within a second; a demotion takes it back to standby
once the batch in flight is done. The same unit runs on both nodes.

Wiring (README, "How it works")::

    inotify (watchdog thread) -> one hand-over per drain -> Batcher
    -> the pipeline: scan the batch's paths -> plan against the peer view
    (the acknowledged manifest) -> delete-storm brake (hold) -> pipelined
    apply over one SSH session (link) -> acknowledged results recorded
    (memory + journal on disk)

The scan is the truth, events are hints: on start, after every reconnect,
after an inotify overflow and on request, the daemon runs the same
reconcile as ``bmsync resync``. Changes made while it was stopped or
disconnected are found by that reconcile; changes made while a reconcile
runs are queued by the watcher, which starts first.

This module is the loop that ties them together; control-socket requests
are answered by ``commands``, the status document built by ``status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from bmsync.config import parse as config_module
from bmsync.config.model import Config
from bmsync.core.errors import BmsyncError, ConfigError, PeerUnreachable, SplitBrainSuspected
from bmsync.core.retries import Retries
from bmsync.core.roles import Role
from bmsync.fs.bases import BaseStore
from bmsync.fs.digests import DigestCache
from bmsync.ha.vip import Runner, run_command
from bmsync.link.session import PeerSession
from bmsync.link.ssh import connect as ssh_connect
from bmsync.sender.changes import Changes
from bmsync.sender.commands import Commands
from bmsync.sender.hold import Hold
from bmsync.sender.link import Connect, Link, Signals, Suspended
from bmsync.sender.outcomes import Outcomes
from bmsync.sender.peer_view import PeerView
from bmsync.sender.pipeline import Pipeline
from bmsync.sender.status import State, Stats, StatusView, derive_state, systemd_line
from bmsync.sender.steps import Steps
from bmsync.service.control import ControlServer
from bmsync.service.notify import Notifier
from bmsync.state.directory import ensure_state_dir
from bmsync.state.journal import ManifestStore
from bmsync.state.records import BackupLog

log = structlog.get_logger("bmsync.daemon")

# A standby daemon reads role.json this often, in case a promotion's
# message to the control socket was lost.
STANDBY_CHECK_S = 0.5


class _LinkLost(Exception):
    pass


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
        self._notifier = notifier or Notifier({})
        self._clock = clock
        self._wall = wall
        self.stats = Stats(wall)
        self.signals = Signals()
        self.link = Link(
            config, self.stats, self.signals, connect=connect, wall=wall, rng=rng, run=run
        )
        self.hold = Hold(config, self.stats, clock, wall)
        self.view = PeerView(
            config.sync.root,
            ManifestStore(config.state_dir),
            BaseStore.in_state_dir(config.state_dir, config.sync.delta_cache_mb),
        )
        self.pipeline = Pipeline(
            config.sync.root, config.syncset(), self.view, DigestCache(config.state_dir)
        )
        self.retries = Retries()  # paths the peer failed to apply
        self._backups = BackupLog(config.state_dir)  # files changed on the passive node
        self.outcomes = Outcomes(self.stats, self.retries, self._backups, clock, wall)
        self.status_view = StatusView(
            self.stats, self.link, self.hold, self.retries, self._backups, wall()
        )
        self.commands = Commands(self)
        self._control = ControlServer(config.control_socket, self.commands.handle)
        # facts the state is derived from (see ``state``)
        self._stopped = False
        self._standby = False  # passive: waiting for a promotion
        self._watching = False
        self._told_systemd = ""
        self.changes = Changes(config, clock, self.signals.wake)
        self.steps = Steps(
            pipeline=self.pipeline,
            view=self.view,
            changes=self.changes,
            outcomes=self.outcomes,
            hold=self.hold,
            stats=self.stats,
            clock=clock,
            stopping=self.signals.stopping.is_set,
            tell_systemd=self.tell_systemd,
        )
        self.sending_stopped = asyncio.Event()  # the session is closed for good
        self._reconcile_wanted = True
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def state(self) -> State:
        """Derived from what is true, never set by a step of the loop."""
        return derive_state(
            stopped=self._stopped,
            standby=self._standby,
            guard=self.link.guard,
            paused=self.hold.paused_reason is not None,
            connected=self.link.connected,
            retries=self.retries,
            reconciling=self.steps.reconciling,
        )

    def tell_systemd(self, detail: str = "") -> None:
        """One STATUS= line per change of state (``systemctl status``)."""
        state = self.state
        why = self.status_view.blocked()[0] if state in (State.PAUSED, State.DEGRADED) else None
        line = systemd_line(state, self.config, self.link.guard, why, detail)
        if line != self._told_systemd:
            self._told_systemd = line
            self._notifier.status(line)

    def status(self) -> dict[str, Any]:
        return self.status_view.document(
            self.state,
            self.config,
            now=self._clock(),
            oldest=(self.changes.batcher.oldest(), self.steps.inflight_oldest),
            queued=self.changes.batcher.queued,
            unsupported=self.pipeline.unsupported.paths(),
        )

    # -- configuration -------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: re-read the configuration; a bad one keeps the old."""
        try:
            new = config_module.load(self.config.source)
        except ConfigError as exc:
            self.stats.error(f"configuration not reloaded, keeping the old one: {exc}")
            return
        old, self.config = self.config, new
        self.link.config = new
        self.hold.reload(new)
        self.pipeline.retarget(new.sync.root, new.syncset())
        self.changes.config = new
        log.info("config_reloaded", path=str(new.source))
        if new.peer != old.peer or new.node != old.node:
            if self.link.session is not None:
                self._spawn(self.link.close())
            self.signals.wake.set()
        if self._watching:
            self.changes.watch()
        self.request_reconcile()

    def request_reconcile(self) -> None:
        self._reconcile_wanted = True
        self.signals.wake.set()

    # -- running ---------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        ensure_state_dir(self.config.state_dir)
        await self._control.start()
        for signum, handler in (
            (signal.SIGTERM, self.stop),
            (signal.SIGINT, self.stop),
            (signal.SIGHUP, self.reload),
        ):
            loop.add_signal_handler(signum, handler)
        # the stored manifest's digest, worked out while SSH connects
        self.view.load_stored_digest()
        if self._notifier.watchdog_interval_s is not None:
            self._spawn(self._watchdog_pings(self._notifier.watchdog_interval_s))
        if self.config.ha.vip is not None:
            self._spawn(self.link.watch_vip(self.config.ha.vip))
        log.info(
            "daemon_started",
            node=self.config.node,
            pid=os.getpid(),
            role=str(self.link.guard.role.role),
        )
        if self.link.guard.role.role is Role.ACTIVE:
            self._watch()
        else:
            self._standby = True
        # Up (and, active, watching: every change from now on is kept). The
        # peer's state is STATUS= and `bmsync status`, never a reason to
        # hold the start (the peer is down exactly when a failover happened).
        self._notifier.ready(f"started; {self.state}")
        self._told_systemd = f"started; {self.state}"
        try:
            await self._main()
        finally:
            self._notifier.stopping()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            await self.link.close()
            self._stopped = True
            self.sending_stopped.set()
            self.outcomes.answer_resyncs(
                PeerUnreachable("the daemon stopped before the resync ran; nothing more was sent")
            )
            await self.view.bases_copied()
            self.changes.stop()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._control.close()
            self.view.close()
            self._notifier.close()
            log.info("daemon_stopped")
        return 0

    def stop(self) -> None:
        """SIGTERM: finish the batch in flight, then exit."""
        self.signals.stop()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watchdog_pings(self, interval_s: float) -> None:
        while True:
            self._notifier.ping()
            await asyncio.sleep(interval_s)

    def _watch(self) -> None:
        """Start watching the tree; what changed before is found by the
        reconcile that follows."""
        self.changes.watch()
        self._watching = True
        self._reconcile_wanted = True

    async def _main(self) -> None:
        stopping = self.signals.stopping
        while not stopping.is_set():
            self.link.check_role()
            if self.link.guard.role.role is not Role.ACTIVE:
                await self._stand_by()
                continue
            if not self._watching:
                self._watch()
            try:
                session = await self.link.open()
                await self._serve(session)
            except (SplitBrainSuspected, Suspended) as exc:
                await self.link.suspended(exc)
                if stopping.is_set():
                    break
                self.tell_systemd()
                await self.link.wait_suspended()
                self._reconcile_wanted = True
            except (BmsyncError, _LinkLost) as exc:
                await self.link.lost(exc)
                if stopping.is_set():
                    break
                self.tell_systemd(f"{exc}")
                await self.link.back_off()
                self._reconcile_wanted = True

    async def _stand_by(self) -> None:
        """Passive: nothing watched, nothing sent, until promoted (told by
        the control socket, or seen in role.json) or stopped."""
        if self._watching:
            self.changes.stop()
            self._watching = False
        await self.link.close()
        self._standby = True
        self.sending_stopped.set()
        role = self.link.guard.role
        log.info("standby", node=self.config.node, epoch=role.epoch)
        try:
            while not self.signals.stopping.is_set():
                self.tell_systemd()
                self.signals.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.signals.wake.wait(), STANDBY_CHECK_S)
                self.link.check_role()
                if self.link.guard.role.role is Role.ACTIVE:
                    log.info("promoted_syncing", epoch=self.link.guard.role.epoch)
                    self.sending_stopped.clear()
                    return
        finally:
            self._standby = False

    async def _serve(self, session: PeerSession) -> None:
        """Sync until stopped or demoted; raises when the link is lost."""
        lost = asyncio.ensure_future(session.wait_lost())
        lost.add_done_callback(lambda _: self.signals.wake.set())
        try:
            while not self.signals.stopping.is_set():
                if lost.done() or self.link.session is not session:
                    if lost.done():
                        await session.why_lost()  # a refusal mid-session, if it said so
                    raise _LinkLost("the SSH session to the agent ended")
                self.link.check_role()
                if self.link.guard.role.role is not Role.ACTIVE:
                    return  # demoted: the batch in flight was the last
                if not self.link.guard.may_send:
                    raise Suspended(self.link.guard.reason or "the guard forbids sending")
                if self.hold.paused_reason is not None:  # no writes at all, not even a reconcile
                    await self._idle(None)
                    continue
                if self._reconcile_wanted:
                    await self._reconcile(session)
                    continue
                now = self._clock()
                self.changes.queue(dict.fromkeys(self.retries.take_due(now), True))
                deadlines = [self.changes.batcher.next_deadline(), self.retries.next_due()]
                deadline = min((d for d in deadlines if d is not None), default=None)
                if deadline is None or deadline > now:
                    await self._idle(None if deadline is None else deadline - now)
                    continue
                batch = self.changes.take(now)
                if batch is None:
                    continue
                if batch.rescan:
                    self._reconcile_wanted = True
                    continue
                await self.steps.apply(session, batch)
        finally:
            lost.cancel()

    async def _idle(self, timeout_s: float | None) -> None:
        self.signals.wake.clear()  # before any await: a wake-up from then on counts
        if timeout_s is None:
            await self.steps.trim()
        self.tell_systemd()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.signals.wake.wait(), timeout_s)

    # -- reconcile ---------------------------------------------------------------

    async def resync(self) -> dict[str, Any]:
        """The next reconcile's answer (``bmsync resync`` through the daemon)."""
        waiter = self.outcomes.resync_waiter()
        self.request_reconcile()
        return await waiter

    async def _reconcile(self, session: PeerSession) -> None:
        self._reconcile_wanted = False
        await self.steps.reconcile(session)


def run_daemon(config: Config, environ: dict[str, str]) -> int:
    """``bmsync run``: the daemon until SIGTERM."""
    notifier = Notifier(environ)
    daemon = Daemon(config, notifier=notifier)
    return asyncio.run(daemon.run())
