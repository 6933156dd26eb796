"""The steps of HA operations, as one node runs them: the same code for a
step on this node (the operation runs here) and for one the peer asked for
(``HaRequest`` over the sync's SSH link, run by this node's agent). Each
returns an ``HaAnswer``: what it did, or why it failed, and this node's
facts afterwards. The list is closed (``HaAction``): nothing else runs.

Synchronous: the agent calls it between two frames; an operation runs it
in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import PurePosixPath

import structlog

from bmsync.config.model import Config
from bmsync.core.errors import BmsyncError, DaemonNotRunning, FencingError, HaRefused
from bmsync.core.frames import Purpose
from bmsync.core.ha_frames import HaAction, HaAnswer, NodeFacts
from bmsync.core.mounts import visible_at
from bmsync.core.paths import show
from bmsync.core.roles import Role
from bmsync.fs.mounts import device_here, read_mounts
from bmsync.ha.fence import fence
from bmsync.ha.peer_link import peer_session
from bmsync.ha.peer_mounts import ask_peer
from bmsync.ha.runner import run_bounded
from bmsync.ha.services import run_step
from bmsync.ha.storage import mount_storage, unmount_storage
from bmsync.ha.storage_plan import PeerUnknown
from bmsync.ha.vip_move import held_prefixes, vip_commands, vip_down, vip_up
from bmsync.link.verify import verify
from bmsync.service import control
from bmsync.service.control import check_answer
from bmsync.service.roles import change_role
from bmsync.state.records import Pause, PauseFlag
from bmsync.state.roles import RoleStore

log = structlog.get_logger("bmsync.ha")

# A full reconcile through the daemon may take long on a large tree.
DRAIN_TIMEOUT_S = 3600.0
CONTROL_TIMEOUT_S = 10.0
SHOWN_DIFFERENCES = 10


def perform(conf: Config, action: HaAction, operation: str = "") -> HaAnswer:
    """Run ``action`` on this node; never raises for a failed step."""
    started = time.monotonic()
    lines: list[str] = []
    try:
        STEPS[action](conf, operation, lines.append)
    except BmsyncError as exc:
        log.warning("ha_step_failed", action=str(action), operation=operation, error=str(exc))
        return HaAnswer(False, lines, str(exc), exc.exit_code, _facts_or_none(conf))
    log.info(
        "ha_step",
        action=str(action),
        operation=operation,
        seconds=round(time.monotonic() - started, 2),
        said=lines,
    )
    return HaAnswer(True, lines, facts=_facts_or_none(conf))


Say = Callable[[str], None]


def node_facts(conf: Config) -> NodeFacts:
    role = RoleStore(conf.state_dir, conf.node).load_record(lenient=True)[0]
    try:
        status = asyncio.run(control.request(conf.control_socket, "status", CONTROL_TIMEOUT_S))
        daemon = str(status.get("state", "unknown"))
        paused = bool(status.get("paused_reason"))
    except DaemonNotRunning:
        daemon, paused = "stopped", PauseFlag(conf.state_dir).load() is not None
    return NodeFacts(
        node=conf.node,
        role=role.role,
        epoch=role.epoch,
        stale=role.is_stale(),
        daemon=daemon,
        paused=paused,
        maintenance=daemon == "maintenance",
        vip_held=_vip_held(conf),
        mounted=_mounted(conf),
    )


def _facts_or_none(conf: Config) -> NodeFacts | None:
    try:
        return node_facts(conf)
    except BmsyncError as exc:
        log.warning("ha_facts_failed", error=str(exc))
        return None


def _vip_held(conf: Config) -> bool | None:
    vip = conf.ha.vip
    if vip is None:
        return None
    try:
        status, out = run_bounded(vip_commands(vip).show, None, CONTROL_TIMEOUT_S)
    except OSError:
        return None
    return bool(held_prefixes(vip, out)) if status == 0 else None


def _mounted(conf: Config) -> list[str]:
    mounts = read_mounts()
    found = []
    for entry in conf.ha.storage:
        seen = visible_at(mounts, PurePosixPath(entry.mount))
        number = device_here(entry.device).number
        if seen is not None and number is not None and seen.holds(number):
            found.append(str(entry.mount))
    return found


def _status(conf: Config, operation: str, say: Say) -> None:
    facts = node_facts(conf)
    say(f"{facts.node}: {facts.role} at epoch {facts.epoch}, daemon {facts.daemon}")


def _drain(conf: Config, operation: str, say: Say) -> None:
    """Everything the daemon has is on the peer, the daemon is paused so
    nothing more goes, and a final check reads both trees: identical."""
    try:
        answer = asyncio.run(control.request(conf.control_socket, "resync", DRAIN_TIMEOUT_S))
    except DaemonNotRunning as exc:
        raise HaRefused(
            f"the daemon is not running on {conf.node}: start it ('systemctl start bmsync') "
            "so that everything reaches the peer before the roles change, then retry"
        ) from exc
    check_answer(answer, f"the final sync from {conf.node}")
    if not answer.get("converged", False) or answer.get("failures"):
        raise HaRefused(
            f"the final sync from {conf.node} did not converge "
            f"({len(answer.get('failures', []))} path(s) failed); see 'bmsync status' there"
        )
    say(
        f"final sync from {conf.node}: {answer.get('ops_applied', 0)} change(s), "
        f"{answer.get('files_sent', 0)} file(s) sent"
    )
    _pause(conf, f"{operation or 'an HA operation'}: held while the roles change")
    say(f"sync paused on {conf.node}")
    differences, checked = asyncio.run(_verify_peer(conf))
    if differences:
        shown = "; ".join(
            f"{show(path)}: {', '.join(what)}" for path, what in differences[:SHOWN_DIFFERENCES]
        )
        raise HaRefused(
            f"the final check found {len(differences)} path(s) that differ on the peer "
            f"({shown}); 'bmsync verify' on {conf.node} lists them"
        )
    say(f"final check: the peer holds the same {checked} path(s)")


async def _verify_peer(conf: Config) -> tuple[list[tuple[bytes, list[str]]], int]:
    async with peer_session(conf, Purpose.READ) as session:
        found, scan = await verify(session, conf.sync.root, conf.syncset())
    return found, len(scan.entries)


def _pause(conf: Config, reason: str) -> None:
    try:
        answer = asyncio.run(
            control.request(conf.control_socket, "pause", CONTROL_TIMEOUT_S, reason=reason)
        )
        check_answer(answer)
    except DaemonNotRunning:
        PauseFlag(conf.state_dir).save(Pause(reason, time.time()))


def _resume(conf: Config, operation: str, say: Say) -> None:
    try:
        answer = asyncio.run(control.request(conf.control_socket, "resume", CONTROL_TIMEOUT_S))
        check_answer(answer)
        changed = bool(answer.get("changed"))
    except DaemonNotRunning:
        changed = PauseFlag(conf.state_dir).clear()
    say(f"sync resumed on {conf.node}" if changed else f"sync was not paused on {conf.node}")


def _services(step: str) -> Callable[[Config, str, Say], None]:
    def run(conf: Config, operation: str, say: Say) -> None:
        if conf.ha.services is None:
            say(f"no ha.services on {conf.node}: nothing to {step}")
            return
        for ran in run_step(conf.ha.services, step):
            say(ran.describe(conf.ha.services.timeout_s))

    return run


def _vip_down(conf: Config, operation: str, say: Say) -> None:
    if conf.ha.vip is None:
        say(f"no ha.vip on {conf.node}: nothing to release")
        return
    say(asyncio.run(vip_down(conf.ha.vip)))


def _vip_up(conf: Config, operation: str, say: Say) -> None:
    if conf.ha.vip is None:
        say(f"no ha.vip on {conf.node}: nothing to hold")
        return
    say(asyncio.run(vip_up(conf.ha.vip)))


def _unmount(conf: Config, operation: str, say: Say) -> None:
    if not conf.ha.storage:
        say(f"no ha.storage on {conf.node}: nothing to unmount")
        return
    unmount_storage(conf.ha.storage, say)


def _mount(conf: Config, operation: str, say: Say) -> None:
    if not conf.ha.storage:
        say(f"no ha.storage on {conf.node}: nothing to mount")
        return
    asked = [str(e.device) for e in conf.ha.storage if not e.shared]
    peer = asyncio.run(ask_peer(conf, asked))
    mount_storage(conf.ha.storage, peer, peer_is_down=False, say=say)


def _fence_peer(conf: Config, operation: str, say: Say) -> None:
    if conf.ha.fencing is None:
        raise HaRefused(f"no ha.fencing on {conf.node}: the peer cannot be fenced from here")
    outcome = fence(conf.ha.fencing)
    if not outcome.ok:
        raise FencingError(f"{outcome.message}; {outcome.advice}")
    say(outcome.message)
    tell_daemon_fenced(conf)


def tell_daemon_fenced(conf: Config) -> None:
    """The daemon's guard takes a confirmed fence as evidence: what only
    the peer could clear (it holding the VIP, say) is cleared."""
    peer = conf.peer.host if conf.peer is not None else "the peer"
    with contextlib.suppress(DaemonNotRunning):
        answer = asyncio.run(
            control.request(conf.control_socket, "fenced", CONTROL_TIMEOUT_S, peer=peer)
        )
        check_answer(answer)


def _mount_peer_down(conf: Config, operation: str, say: Say) -> None:
    if not conf.ha.storage:
        say(f"no ha.storage on {conf.node}: nothing to mount")
        return
    down = PeerUnknown(f"the peer is down ({operation})")
    mount_storage(conf.ha.storage, down, peer_is_down=True, say=say)


def _role(change: str) -> Callable[[Config, str, Say], None]:
    def run(conf: Config, operation: str, say: Say) -> None:
        done = change_role(conf, change, operation)
        for line in done.lines:
            say(line)
        wanted = Role.ACTIVE if change == "promote" else Role.PASSIVE
        if done.role.role is not wanted:
            raise HaRefused(f"{conf.node} is still {done.role.role} after '{change}'")

    return run


STEPS: dict[HaAction, Callable[[Config, str, Say], None]] = {
    HaAction.STATUS: _status,
    HaAction.DRAIN: _drain,
    HaAction.RESUME: _resume,
    HaAction.SERVICES_STOP: _services("stop"),
    HaAction.SERVICES_START: _services("start"),
    HaAction.VIP_DOWN: _vip_down,
    HaAction.VIP_UP: _vip_up,
    HaAction.STORAGE_UNMOUNT: _unmount,
    HaAction.STORAGE_MOUNT: _mount,
    HaAction.DEMOTE: _role("demote"),
    HaAction.PROMOTE: _role("promote"),
    HaAction.FENCE_PEER: _fence_peer,
    HaAction.STORAGE_MOUNT_PEER_DOWN: _mount_peer_down,
}
