"""The commands that change this node's role: promote, demote and
reset-epoch. Each writes role.json, ends the writing session accepted here
if it must, then tells the daemon, if one runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import structlog

from bmsync.cli.daemon_client import NOTHING_CHANGED
from bmsync.config.model import Config
from bmsync.core.errors import DaemonNotRunning, UsageError
from bmsync.service import control
from bmsync.service.control import check_answer as check
from bmsync.service.roles import DEMOTE_WAIT_S, END_SESSION_WAIT_S, change_role, now_iso
from bmsync.state.directory import ensure_state_dir
from bmsync.state.lock import SenderLock
from bmsync.state.roles import RoleStore

log = structlog.get_logger("bmsync.cli")


def promote(conf: Config, args: argparse.Namespace) -> int:
    return _change_role(conf, "promote")


def demote(conf: Config, args: argparse.Namespace) -> int:
    return _change_role(conf, "demote")


def _change_role(conf: Config, change: str) -> int:
    """``bmsync promote`` / ``bmsync demote`` (see ``service.roles``)."""
    done = change_role(conf, change)
    for line in done.lines:
        print(line)
    return 0 if done.changed else NOTHING_CHANGED


def reset_epoch(conf: Config, args: argparse.Namespace) -> int:
    """``bmsync reset-epoch``: lower this passive node's highest seen epoch
    after a sender with a leaked key raised it (README, "A leaked key").
    Logged and recorded in role.json; the writing session on this node, if
    any (the hostile one, perhaps), is ended."""
    epoch: int = args.to
    reason: str = args.reason
    if not reason.strip():
        raise UsageError(
            'bmsync reset-epoch needs --reason "...": say why the epoch seen here is not '
            "to be trusted (it is logged and kept in role.json)"
        )
    ensure_state_dir(conf.state_dir)
    store = RoleStore(conf.state_dir, conf.node)
    before = store.load_record(lenient=True)[0]
    after = store.update(
        lambda role: role.reset_seen(epoch),
        f"{now_iso()} bmsync reset-epoch from {before.highest_seen} to epoch {epoch}: {reason}",
        lenient=True,
    )
    if after == before:
        print(
            f"bmsync on {conf.node}: nothing above epoch {epoch} (highest seen: "
            f"{before.highest_seen}, own epoch {before.epoch}); nothing changed"
        )
        return NOTHING_CHANGED
    log.warning(
        "epoch_reset",
        node=conf.node,
        old=str(before.highest_seen),
        new=str(after.highest_seen),
        own_epoch=after.epoch,
        reason=reason,
    )
    print(
        f"bmsync on {conf.node}: highest seen epoch reset from {before.highest_seen} to "
        f"{after.highest_seen} (own epoch {after.epoch}); recorded in {store.path}"
    )
    # a session accepted at the old epoch (the leaked key's) writes nothing more
    ended = SenderLock(conf.state_dir).end_session(END_SESSION_WAIT_S)
    if ended is not None:
        print(f"  {ended}")
    with contextlib.suppress(DaemonNotRunning):
        check(asyncio.run(control.request(conf.control_socket, "role", DEMOTE_WAIT_S + 10)))
    return 0
