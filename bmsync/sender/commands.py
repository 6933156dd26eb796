"""The daemon's control socket: each request (``bmsync status``, ``pause``,
``resume``, ``resync``, and the ``role`` note of ``promote``/``demote``)
names its handler in ``Commands.table``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bmsync.core.errors import BmsyncError, NotActive, PeerUnreachable, SyncPaused
from bmsync.core.guard import GuardState
from bmsync.core.roles import Role
from bmsync.service.roles import DEMOTE_WAIT_S

if TYPE_CHECKING:
    from bmsync.sender.daemon import Daemon

# How long `bmsync demote` waits for the batch in flight before answering.

Request = dict[str, Any]
Answer = dict[str, Any]


class Commands:
    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self.table: dict[str, Callable[[Request], Awaitable[Answer]]] = {
            "status": self._status,
            "pause": self._pause,
            "resume": self._resume,
            "role": self._role,
            "fenced": self._fenced,
            "resync": self._resync,
        }

    async def handle(self, request: Request) -> Answer:
        command = request["command"]
        handler = self.table.get(command)
        if handler is None:
            raise BmsyncError(f"unknown control command {command!r}")
        return await handler(request)

    def _answer(self, changed: bool, **more: Any) -> Answer:
        """A control answer: the state now, and what still stops sync."""
        daemon = self._daemon
        reason, _, clears = daemon.status_view.blocked()
        return {
            "ok": True,
            "changed": changed,
            "state": str(daemon.state),
            "reason": reason,
            "clears": clears,
            **more,
        }

    async def _status(self, request: Request) -> Answer:
        return {"ok": True, **self._daemon.status()}

    async def _pause(self, request: Request) -> Answer:
        hold = self._daemon.hold
        if hold.paused_reason is not None:
            return self._answer(changed=False, reason=hold.paused_reason)
        reason = str(request.get("reason") or "paused by an operator (bmsync pause)")
        hold.pause(reason, held={})
        self._daemon.tell_systemd()
        return self._answer(changed=True)

    async def _role(self, request: Request) -> Answer:
        """`bmsync promote` / `demote` changed the persisted role."""
        daemon = self._daemon
        daemon.link.check_role()
        if daemon.link.guard.role.role is not Role.ACTIVE:
            # demoted: answer once nothing more is sent (the batch in
            # flight finished, the session closed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(daemon.sending_stopped.wait(), DEMOTE_WAIT_S)
            return self._answer(changed=True, stopped=daemon.sending_stopped.is_set())
        return self._answer(changed=True)

    async def _fenced(self, request: Request) -> Answer:
        """`bmsync ha fence` (or a takeover) confirmed the peer powered off:
        evidence that clears what only the peer could have cleared."""
        before = self._daemon.link.guard.suspicions
        self._daemon.link.fenced(str(request.get("peer") or "the peer"))
        return self._answer(changed=self._daemon.link.guard.suspicions != before)

    async def _resume(self, request: Request) -> Answer:
        if request.get("force"):
            return self._force(str(request.get("reason") or ""))
        daemon = self._daemon
        hold = daemon.hold
        if hold.paused_reason is None:
            return self._answer(changed=False)
        if request.get("discard"):
            restored = await hold.restore_held(
                daemon.link.session, str(daemon.state), daemon.view.tree
            )
            self._resumed(release=False)
            daemon.request_reconcile()
            return self._answer(changed=True, **restored)
        self._resumed(release=True)
        return self._answer(changed=True)

    def _resumed(self, release: bool) -> None:
        daemon = self._daemon
        held, reconcile = daemon.hold.resume(release)
        daemon.changes.queue(held)
        if reconcile:  # the storm was found by a reconcile
            daemon.request_reconcile()
        daemon.tell_systemd()
        daemon.signals.ask_now()

    def _force(self, reason: str) -> Answer:
        """``resume --force``: clear the suspicions without evidence (never
        a stale node's: its peer refuses it anyway)."""
        if not reason:
            raise BmsyncError("'resume --force' needs '--reason \"...\"' (it is recorded)")
        if self._daemon.link.guard.state is not GuardState.SUSPENDED:
            return self._answer(changed=False)
        return self._answer(changed=self._daemon.link.force(reason))

    async def _resync(self, request: Request) -> Answer:
        """``bmsync resync`` through the daemon: the next reconcile's report."""
        daemon = self._daemon
        guard = daemon.link.guard
        if guard.state is not GuardState.SYNCING:
            raise NotActive(
                f"sync is {daemon.state} ({guard.reason}); cleared by: "
                + "; or ".join(guard.clears)
            )
        if daemon.hold.paused_reason is not None:
            raise SyncPaused(
                f"sync is paused ({daemon.hold.paused_reason}); nothing was sent. 'bmsync resume' "
                "sends again (after a delete storm: propagates the deletions; 'bmsync resume "
                "--discard' restores the files here instead)"
            )
        if daemon.link.session is None or not daemon.link.connected:
            raise PeerUnreachable(
                f"not connected to the peer ({daemon.state}); see 'bmsync status', and try again"
            )
        if request.get("allow_deletes"):
            daemon.hold.release()
        return await daemon.resync()
