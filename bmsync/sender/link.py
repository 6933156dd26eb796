"""The daemon's link to the peer: connecting (the handshake compares roles),
backing off between attempts (with jitter), and feeding the guard with
what it learns — the peer's welcome or refusal, a lost link, the VIP
checks, a change of this node's role."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable

import structlog

from bmsync.config.model import Config, PeerConfig, VipConfig
from bmsync.core.errors import BmsyncError, SplitBrainSuspected
from bmsync.core.frames import Purpose
from bmsync.core.guard import Guard, GuardState
from bmsync.core.observations import (
    ForcedResume,
    Observation,
    PeerFenced,
    PeerLost,
    PeerWelcomed,
    RoleChanged,
    VipCheckFailed,
)
from bmsync.core.roles import NodeRole, Role, Stamp
from bmsync.ha.vip import Runner, observe_vip, run_command
from bmsync.link.session import PeerSession
from bmsync.link.ssh import FrameChannel
from bmsync.link.ssh import connect as ssh_connect
from bmsync.sender.status import Stats, iso
from bmsync.state.roles import RoleStore

log = structlog.get_logger("bmsync.daemon")

Connect = Callable[[PeerConfig], Awaitable[FrameChannel]]
# How long the first session waits for the first VIP check (arping: 2 s).
FIRST_VIP_CHECK_WAIT_S = 10.0


class Suspended(Exception):
    """The guard forbids sending: wait for evidence, retrying the handshake."""


class Signals:
    """What wakes the daemon's loop: ``wake`` (something to do), ``retry``
    (ask the peer now: a role change, a resume), ``stopping``."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.retry = asyncio.Event()
        self.stopping = asyncio.Event()

    def stop(self) -> None:
        log.info("stop_requested")
        self.stopping.set()
        self.wake.set()

    def ask_now(self) -> None:
        self.retry.set()
        self.wake.set()

    async def sleep(self, seconds: float) -> None:
        """Until ``seconds`` pass, the daemon stops, or ``retry`` is set."""
        waits = [
            asyncio.ensure_future(self.stopping.wait()),
            asyncio.ensure_future(self.retry.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()


class Link:
    """The session to the peer's agent, and the guard that says whether
    anything may be sent over it."""

    def __init__(
        self,
        config: Config,
        stats: Stats,
        signals: Signals,
        *,
        connect: Connect = ssh_connect,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        run: Runner = run_command,
    ) -> None:
        self.config = config
        self.stats = stats
        self._signals = signals
        self._connect_channel = connect
        self._wall = wall
        self._rng = rng
        self._run = run
        self._roles = RoleStore(config.state_dir, config.node)
        self._role_version = self._roles.version()
        self.guard = Guard.starting(
            self._roles.load(), wall(), vip_configured=config.ha.vip is not None
        )
        self._peer_role: Role | None = None
        self._peer_epoch: int | None = None
        self._vip_checked = asyncio.Event()  # the guard has had a VIP observation
        self.session: PeerSession | None = None
        self.connected = False  # a session is open and the guard lets us send
        self._attempt = 0  # connections failed in a row

    @property
    def peer_role(self) -> Role | None:
        return self._peer_role

    @property
    def peer_epoch(self) -> int | None:
        return self._peer_epoch

    def _error(self, message: str) -> None:
        self.stats.error(message)

    # -- the session ------------------------------------------------------------------

    async def open(self) -> PeerSession:
        peer = self.config.require_peer()
        channel = await self._connect_channel(peer)
        me = self.guard.role
        session = PeerSession(
            channel, self.config.node, me.epoch, me.role, max_entries=self.config.sync.max_entries
        )
        self.session = session
        welcome = await session.open(Purpose.WRITE)
        self.stats.last_contact = self._wall()
        self._peer_role, self._peer_epoch = welcome.role, welcome.epoch
        self._observe(PeerWelcomed(welcome.node, Stamp(welcome.seen_epoch, welcome.seen_node)))
        await self._first_vip_check()
        if not self.guard.may_send:
            raise Suspended(self.guard.reason or "the guard forbids sending")
        self.connected = True
        self._attempt = 0
        return session

    async def close(self) -> None:
        self.connected = False
        session, self.session = self.session, None
        if session is not None:
            with contextlib.suppress(BmsyncError, OSError):
                await session.close()

    async def suspended(self, exc: SplitBrainSuspected | Suspended) -> None:
        """The peer refused us, or the guard forbids sending."""
        self._signals.retry.clear()
        await self.close()
        if isinstance(exc, SplitBrainSuspected):
            self._refused(exc)

    async def wait_suspended(self) -> None:
        """Ask again now and then (or at once after a role change): the peer
        may have been demoted."""
        await self._signals.sleep(self.config.require_peer().reconnect_max_s)

    async def lost(self, exc: Exception) -> None:
        """The link failed (or never came up)."""
        self._signals.retry.clear()
        await self.close()
        if self._signals.stopping.is_set():
            return
        self._error(f"peer link: {exc}")
        self._observe(PeerLost(str(exc)))  # not a suspicion: roles were not compared

    async def back_off(self) -> None:
        """Wait before connecting again: longer after each failure in a row,
        up to ``reconnect_max_s``, jittered (two daemons never retry in step)."""
        peer = self.config.require_peer()
        delay = min(peer.reconnect_max_s, peer.reconnect_min_s * 2**self._attempt)
        delay *= 0.5 + self._rng() / 2  # jitter: two daemons never retry in step
        self._attempt += 1
        log.info("reconnect_wait", seconds=round(delay, 3), attempt=self._attempt)
        await self._signals.sleep(delay)

    def _refused(self, exc: SplitBrainSuspected) -> None:
        """The peer refused us, at the handshake or in the middle of a
        session (it was promoted, or saw a higher stamp): suspend."""
        self.stats.last_contact = self._wall()
        self._peer_role, self._peer_epoch = exc.refusal.role, None
        self._observe(exc.refusal)
        self._error(f"peer refused: {exc}")

    # -- the guard ------------------------------------------------------------------------

    def _observe(self, observation: Observation) -> None:
        """Feed the guard; log each transition with its evidence; persist
        a higher stamp seen (fsynced) before acting on it."""
        before = self.guard.role
        for change in self.guard.observe(observation, self._wall()):
            log.warning(
                "guard",
                old=str(change.old),
                new=str(change.new),
                reason=change.reason,
                evidence=change.evidence,
            )
            if change.new is GuardState.SYNCING:
                self._signals.retry.set()  # a suspended daemon asks its peer now, not later
        seen = self.guard.role.highest_seen
        if seen != before.highest_seen:
            # merged with the file, under its lock: an operator's demote
            # written meanwhile is kept, not overwritten with our old view
            disk = self._roles.update(lambda role: role.saw(seen), f"saw {seen}")
            self._role_version = self._roles.version()
            if disk != self.guard.role:
                self._role_changed(disk)

    def check_role(self) -> None:
        """Pick up a change of role.json made by another command (promote,
        demote) even if its message to the control socket was lost."""
        version = self._roles.version()
        if version == self._role_version:
            return
        self._role_version = version
        role = self._roles.load()
        if role != self.guard.role:
            self._role_changed(role)

    def _role_changed(self, role: NodeRole) -> None:
        self._observe(RoleChanged(role))
        if role.role is not Role.ACTIVE:
            log.warning("demoted", epoch=role.epoch)  # the daemon stands by
        self._signals.ask_now()

    def fenced(self, peer: str) -> None:
        """The peer was powered off, confirmed by its BMC."""
        self._observe(PeerFenced(peer))
        log.warning("peer_fenced", peer=peer, state=str(self.guard.state))
        self._signals.ask_now()

    def force(self, reason: str) -> bool:
        """``resume --force``: clear the suspicions without evidence (never
        a stale node's: its peer refuses it anyway). True if that changed
        anything."""
        before = self.guard.suspicions
        self._observe(ForcedResume(reason))
        with self._roles.locked():
            self._roles.save(
                self._roles.load(), "resume --force", forced=f"{iso(self._wall())} {reason}"
            )
        self._role_version = self._roles.version()
        log.warning("forced_resume", reason=reason, state=str(self.guard.state))
        self._signals.ask_now()
        return self.guard.suspicions != before

    # -- the VIP ------------------------------------------------------------------------------

    async def watch_vip(self, vip: VipConfig) -> None:
        """The guard's VIP observations, every ``check_interval_s``. A check
        that cannot run suspends sync (fail closed) until one works again;
        a reload that fixes ``ha.vip`` takes effect at the next check."""
        failed: str | None = None  # the last check's failure, logged once
        while True:
            vip = self.config.ha.vip or vip  # removing it takes a restart
            before = self.guard.role
            seen = await observe_vip(vip, self._run)
            self.check_role()
            after = self.guard.role
            if (after.role, after.epoch) != (before.role, before.epoch):
                # made under the old role (the check takes seconds): judged
                # under the new one it would mislead; check again at once
                log.info("vip_check_discarded", why="the role changed during the check")
                continue
            if isinstance(seen, VipCheckFailed) and seen.reason != failed:
                self._error(f"VIP check: {seen.reason}")
            failed = seen.reason if isinstance(seen, VipCheckFailed) else None
            self._observe(seen)
            self._vip_checked.set()
            self._signals.wake.set()
            await asyncio.sleep(vip.check_interval_s)

    async def _first_vip_check(self) -> None:
        """No write before the guard has checked the VIP once. The first
        check (arping listens for up to 2 s) runs while SSH connects; if it
        has not answered in time, the guard's "not checked yet" holds."""
        if self.guard.vip_configured:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._vip_checked.wait(), FIRST_VIP_CHECK_WAIT_S)
