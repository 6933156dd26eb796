"""``bmsync ha storage mount|unmount``: the shared storage on this node.

Mount: the whole plan is decided first (``storage_plan``), then each entry
in order is checked (fsck), given a mount point and mounted; if one fails,
what this run mounted is unmounted again, so a failed mount leaves the node
as it was. Unmount: in reverse order; a busy mount's holders are listed,
sent SIGTERM, then SIGKILL after the entry's ``kill_grace_s``, and the
unmount is tried again: never lazily (a lazy unmount hides the mount while
its holders keep writing to the device the peer is about to mount).

The tools (``e2fsck``, ``xfs_repair``, ``mount``, ``umount``, ``fuser``)
run behind an injected runner; mounts and devices are read through
injected functions; signals are sent through an injected function.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import structlog

from bmsync.config.model import StorageConfig
from bmsync.core.errors import HaRefused
from bmsync.core.mounts import DeviceHere, Mount
from bmsync.fs.mounts import device_here, read_mounts
from bmsync.ha.runner import run_split
from bmsync.ha.storage_plan import (
    AlreadyMounted,
    PeerReport,
    PeerUnknown,
    Refused,
    ToMount,
    Unmount,
    fsck_verdict,
    holders_argv,
    plan_mount,
    plan_unmount,
    umount_argv,
)

log = structlog.get_logger("bmsync.ha")

_NOT_ASKED = PeerUnknown("a dry run does not ask the peer")

# argv, time limit (None: none) -> exit status (None: killed), stdout, stderr
Runner = Callable[[Sequence[str], float | None], tuple[int | None, str, str]]
# mount and umount: a dead SAN can hang them; past this they are reported
MOUNT_TIMEOUT_S = 120.0
# holders left after SIGKILL have this long to go (a process in
# uninterruptible sleep on a dead disk may never go)
KILL_WAIT_S = 5.0
POLL_S = 0.2
SHOWN_CHARS = 400


def proc_command(pid: int) -> str:
    """The command line of ``pid`` (its name in brackets if it has none)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        if args != [b""]:
            return " ".join(os.fsdecode(a) for a in args)
        return f"[{Path(f'/proc/{pid}/comm').read_text().strip()}]"
    except OSError:
        return "(gone)"


def send_signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended on its own
        os.kill(pid, signum)


@dataclass(frozen=True)
class StorageTools:
    """What the storage steps touch, injected so tests can drive them."""

    run: Runner = run_split
    mounts: Callable[[], list[Mount]] = read_mounts
    device: Callable[[str], DeviceHere] = device_here
    signal: Callable[[int, int], None] = send_signal
    command_of: Callable[[int], str] = proc_command
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    own_pid: int = field(default_factory=os.getpid)


def _devices(entries: tuple[StorageConfig, ...], tools: StorageTools) -> dict[str, DeviceHere]:
    return {str(e.device): tools.device(str(e.device)) for e in entries}


def _said(out: str) -> str:
    return " ".join(out.split())[-SHOWN_CHARS:] or "no output"


def _ended(argv: Sequence[str], status: int | None, out: str, timeout_s: float | None) -> str:
    if status is None:
        return f"'{' '.join(argv)}' still running after {timeout_s:g} s: killed"
    return f"'{' '.join(argv)}' failed (exit status {status}: {_said(out)})"


def _refusal(what: str, refused: list[Refused]) -> HaRefused:
    return HaRefused(f"{what}: " + "; ".join(r.reason for r in refused))


# -- mount ---------------------------------------------------------------


def mount_plan_lines(
    entries: tuple[StorageConfig, ...], peer_host: str | None, tools: StorageTools
) -> list[str]:
    """``storage mount --dry-run``: what would run, from this node's state
    (the peer is not asked)."""
    plan = plan_mount(entries, _devices(entries, tools), tools.mounts(), _NOT_ASKED, True)
    lines = []
    if peer_host is not None and any(not e.shared for e in entries):
        lines.append(
            f"# first, the peer {peer_host} is asked over SSH which devices it has mounted"
        )
    for step in plan.steps:
        if isinstance(step, AlreadyMounted):
            lines.append(
                f"# {step.entry.mount}: {step.entry.device} already mounted; nothing to do"
            )
            continue
        if not Path(step.entry.mount).exists():
            lines.append(f"mkdir -p {step.entry.mount}")
        if step.fsck:
            lines.append(" ".join(step.fsck))
        lines.append(" ".join(step.mount))
    lines += [f"# refused: {r.reason}" for r in plan.refused]
    return lines


def mount_storage(
    entries: tuple[StorageConfig, ...],
    peer: PeerReport,
    peer_is_down: bool,
    say: Callable[[str], None],
    tools: StorageTools | None = None,
) -> None:
    """Mount every entry in order; ``say`` gets what was done, a line per
    entry, as it is done. HaRefused if the plan refuses (nothing is done)
    or a step fails (what this run mounted is unmounted again)."""
    tools = tools or StorageTools()
    plan = plan_mount(entries, _devices(entries, tools), tools.mounts(), peer, peer_is_down)
    if plan.refused:
        raise _refusal("nothing mounted", plan.refused)
    if plan.peer_assumed_down:
        log.warning("peer_assumed_down", reason=plan.peer_assumed_down, flag="--peer-is-down")
    mounted: list[StorageConfig] = []
    for step in plan.steps:
        if isinstance(step, AlreadyMounted):
            say(f"{step.entry.mount}: {step.entry.device} already mounted; nothing to do")
            continue
        try:
            say(_mount_one(step, tools))
        except HaRefused as exc:
            raise HaRefused(f"{exc}; {_undo(mounted, tools)}") from exc
        mounted.append(step.entry)


def _mount_one(step: ToMount, tools: StorageTools) -> str:
    entry = step.entry
    checked = _fsck(step, tools) if step.fsck else ""
    _make_mount_point(entry)
    status, out, err = tools.run(step.mount, MOUNT_TIMEOUT_S)
    if status != 0:
        raise HaRefused(
            f"{entry.mount}: {_ended(step.mount, status, out + err, MOUNT_TIMEOUT_S)}; "
            f"check the device and the kernel log (dmesg), then retry"
        )
    log.info("storage_mounted", device=str(entry.device), mount=str(entry.mount))
    return f"{entry.mount}: mounted {entry.device} ({entry.fstype}){checked}"


def _fsck(step: ToMount, tools: StorageTools) -> str:
    """Check the filesystem; a note for the report. HaRefused if it has
    errors a preen cannot fix."""
    assert step.fsck is not None
    entry = step.entry
    started = tools.clock()
    status, out, err = tools.run(step.fsck, None)
    seconds = tools.clock() - started
    log.info(
        "storage_fsck",
        device=str(entry.device),
        command=" ".join(step.fsck),
        status=status,
        seconds=round(seconds, 2),
        output=(out + err)[-4000:],
    )
    verdict = fsck_verdict(entry, status, out + err)
    if verdict is not None:
        raise HaRefused(
            f"{entry.mount}: {_ended(step.fsck, status, out + err, None)}: {verdict}; "
            f"nothing mounted from {entry.device}"
        )
    fixed = " (it fixed errors; see the log)" if status in (1, 2) and entry.fstype != "xfs" else ""
    return f", checked by {step.fsck[0]} in {seconds:.1f} s{fixed}"


def _make_mount_point(entry: StorageConfig) -> None:
    """The mount point must be a real directory here (a symlink on the way
    would mount elsewhere than the configuration says); it is created if
    missing."""
    mount = Path(entry.mount)
    real = Path(os.path.realpath(mount))
    if real != mount:
        raise HaRefused(
            f"{mount} resolves to {real} (a symbolic link on the way): a mount point must be "
            f"a real directory; put {real} in ha.storage, or remove the link"
        )
    if mount.exists() and not mount.is_dir():
        raise HaRefused(f"{mount} exists and is not a directory; move it away, then retry")
    if not mount.exists():
        try:
            mount.mkdir(mode=0o755, parents=True)
        except OSError as exc:
            raise HaRefused(f"cannot create the mount point {mount}: {exc.strerror}") from exc
        log.info("mount_point_created", mount=str(mount))


def _undo(mounted: list[StorageConfig], tools: StorageTools) -> str:
    """Unmount what this run mounted (reverse order); what became of it."""
    if not mounted:
        return "nothing was mounted by this run"
    undone, left = [], []
    for entry in reversed(mounted):
        argv = umount_argv(PurePosixPath(entry.mount))
        status, out, err = tools.run(argv, MOUNT_TIMEOUT_S)
        if status == 0:
            undone.append(str(entry.mount))
            log.info("storage_unmounted", mount=str(entry.mount), why="undo")
        else:
            left.append(f"{entry.mount} ({_said(out + err)})")
    said = f"unmounted again what this run mounted: {', '.join(undone)}" if undone else ""
    if left:
        said += ("; " if said else "") + f"STILL MOUNTED: {', '.join(left)}: unmount by hand"
    return said


# -- unmount -------------------------------------------------------------


def unmount_plan_lines(entries: tuple[StorageConfig, ...], tools: StorageTools) -> list[str]:
    """``storage unmount --dry-run``: what would run."""
    plan = plan_unmount(entries, _devices(entries, tools), tools.mounts())
    lines = [f"# {e.mount}: not mounted here; nothing to do" for e in plan.not_mounted]
    for step in plan.steps:
        lines.append(" ".join(umount_argv(step.mount_point)))
        lines.append(
            f"#   if busy: {' '.join(holders_argv(step.mount_point))}, SIGTERM to each holder, "
            f"SIGKILL after {step.entry.kill_grace_s:g} s, then umount again"
        )
    lines += [f"# refused: {r.reason}" for r in plan.refused]
    return lines


def unmount_storage(
    entries: tuple[StorageConfig, ...],
    say: Callable[[str], None],
    tools: StorageTools | None = None,
) -> None:
    """Unmount every entry in reverse order; ``say`` gets what was done, a
    line per mount, and each holder as it is signalled. HaRefused if the
    plan refuses (nothing is done) or a mount stays busy."""
    tools = tools or StorageTools()
    plan = plan_unmount(entries, _devices(entries, tools), tools.mounts())
    if plan.refused:
        raise _refusal("nothing unmounted", plan.refused)
    for entry in plan.not_mounted:
        say(f"{entry.mount}: not mounted; nothing to do")
    for step in plan.steps:
        say(_unmount_one(step, say, tools))


def _unmount_one(step: Unmount, say: Callable[[str], None], tools: StorageTools) -> str:
    point = step.mount_point
    argv = umount_argv(point)
    status, out, err = tools.run(argv, MOUNT_TIMEOUT_S)
    if status == 0:
        log.info("storage_unmounted", mount=str(point))
        return f"{point}: unmounted"
    if "busy" not in out + err:
        raise HaRefused(f"{point}: {_ended(argv, status, out + err, MOUNT_TIMEOUT_S)}")
    holders = _holders(point, tools)
    if not holders:
        raise HaRefused(
            f"{point} is busy but no process holds it: something in the kernel does (a loop "
            "device or swap file on it, an NFS export, a mount under it); 'losetup -a', "
            "'swapon --show', 'exportfs -v' and 'findmnt -R' show which"
        )
    grace = step.entry.kill_grace_s
    _signal_all(holders, signal.SIGTERM, f"on {point}: SIGTERM", say, tools)
    left = _wait_released(point, grace, tools)
    if left:
        _signal_all(
            left, signal.SIGKILL, f"still on {point} after {grace:g} s: SIGKILL", say, tools
        )
        left = _wait_released(point, KILL_WAIT_S, tools)
    status, out, err = tools.run(argv, MOUNT_TIMEOUT_S)
    if status == 0:
        log.info("storage_unmounted", mount=str(point), holders_stopped=len(holders))
        return f"{point}: unmounted ({len(holders)} holder(s) stopped)"
    left = _holders(point, tools)
    named = ", ".join(f"{pid} ({command})" for pid, command in left) or "no process now"
    raise HaRefused(
        f"{point} is still busy after SIGKILL ({_said(out + err)}); held by: {named}. "
        "A process stuck in the kernel (state D in 'ps') waits on the device: find why "
        "(dmesg), then run 'bmsync ha storage unmount' again; never a lazy unmount"
    )


def _holders(point: PurePosixPath, tools: StorageTools) -> list[tuple[int, str]]:
    """(pid, command) of each process using the filesystem at ``point``.
    HaRefused if this process is one (it would stop itself)."""
    argv = holders_argv(point)
    status, out, err = tools.run(argv, MOUNT_TIMEOUT_S)
    # fuser: 0 some found, 1 none (its pids on stdout, the rest on stderr)
    if status not in (0, 1):
        raise HaRefused(f"{point}: {_ended(argv, status, err, MOUNT_TIMEOUT_S)}")
    pids = sorted({int(word) for word in out.split() if word.isdigit()})
    if tools.own_pid in pids:
        raise HaRefused(
            f"{point}: bmsync itself uses it (its working directory?): "
            "run it from outside the mount"
        )
    return [(pid, tools.command_of(pid)) for pid in pids]


def _signal_all(
    holders: list[tuple[int, str]],
    signum: int,
    what: str,
    say: Callable[[str], None],
    tools: StorageTools,
) -> None:
    for pid, command in holders:
        say(f"holder {pid} ({command}) {what}")
        log.warning(
            "storage_holder_signalled",
            pid=pid,
            command=command,
            signal=signal.Signals(signum).name,
        )
        tools.signal(pid, signum)


def _wait_released(
    point: PurePosixPath, within_s: float, tools: StorageTools
) -> list[tuple[int, str]]:
    """The holders still there after ``within_s`` (none: at once)."""
    deadline = tools.clock() + within_s
    while True:
        left = _holders(point, tools)
        if not left or tools.clock() >= deadline:
            return left
        tools.sleep(POLL_S)
