"""The floating IP as the guard sees it: does this node hold it, and does
anyone else answer for it (duplicate address detection with arping)?"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence

import structlog

from bmsync.config.model import VipConfig
from bmsync.core.errors import BmsyncError
from bmsync.core.observations import VipCheckFailed, VipSeen

log = structlog.get_logger("bmsync.vip")

# argv -> (exit status, stdout); injected so tests can drive the real tools
# inside a network namespace, or anything else.
Runner = Callable[[Sequence[str]], Awaitable[tuple[int, str]]]

# "Unicast reply from 10.0.0.5 [02:00:00:00:00:02]  0.712ms"
_REPLY = re.compile(r"reply from \S+ \[([0-9A-Fa-f:]{17})\]")
DAD_WAIT_S = 1


async def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """Run ``argv``; its exit status (negative: killed by that signal) and
    its output, stdout and stderr together."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except FileNotFoundError as exc:
        raise BmsyncError(
            f"{argv[0]} is missing; install iproute2 and iputils-arping for the VIP checks"
        ) from exc
    except OSError as exc:
        raise BmsyncError(f"cannot run {argv[0]}: {exc}") from exc
    out, _ = await process.communicate()
    status = process.returncode
    return (0 if status is None else status), out.decode(errors="replace")


def how(status: int, out: str) -> str:
    said = " ".join(out.split()) or "no output"
    ended = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
    return f"{ended}: {said}"


def show_argv(vip: VipConfig) -> list[str]:
    """The addresses of the VIP's interface, one line each."""
    return ["ip", "-o", "-4", "addr", "show", "dev", vip.interface]


def detect_argv(vip: VipConfig) -> list[str]:
    """Who else answers ARP for the VIP. DAD mode (-D) asks from 0.0.0.0,
    so our own address does not answer: any reply is another host."""
    return ["arping", "-D", "-c", "2", "-w", str(DAD_WAIT_S + 1), "-I", vip.interface, vip.address]


async def observe_vip(vip: VipConfig, run: Runner = run_command) -> VipSeen | VipCheckFailed:
    """Whether ``vip.address`` is on ``vip.interface`` here, and the MACs of
    other hosts answering ARP for it; or, when the check cannot run (a
    missing interface or tool, an interface that is down), why not: the
    guard takes that as a suspicion, never as a clean VIP."""
    where = f"ha.vip.interface {vip.interface}"
    try:
        status, out = await run(show_argv(vip))
        if status != 0:
            return VipCheckFailed(f"{where}: 'ip addr show' failed ({how(status, out)})")
        held = any(
            field.split("/")[0] == vip.address
            for line in out.splitlines()
            for field in line.split()
        )
        status, out = await run(detect_argv(vip))
    except BmsyncError as exc:
        return VipCheckFailed(f"{where}: {exc}")
    others = tuple(sorted({m.lower() for m in _REPLY.findall(out)}))
    # arping -D exits 0 when no one answered and 1 when someone did; any
    # other status (2: no such interface, interface down, no permission) or
    # a signal means the check did not run.
    if status == 0 or (status == 1 and others):
        return VipSeen(held=held, other_macs=others)
    if status == 1:
        return VipCheckFailed(
            f"{where}: arping -D {vip.address} reported a reply but no MAC ({how(status, out)})"
        )
    return VipCheckFailed(f"{where}: arping -D {vip.address} could not check ({how(status, out)})")
