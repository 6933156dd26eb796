"""The floating IP as the guard sees it: does this node hold it, and does
anyone else answer for it (duplicate address detection with arping)?"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence

import structlog

from bmsync.config import VipConfig
from bmsync.core.guard import VipSeen
from bmsync.errors import BmsyncError

log = structlog.get_logger("bmsync.vip")

# argv -> (exit status, stdout); injected so tests can drive the real tools
# inside a network namespace, or anything else.
Runner = Callable[[Sequence[str]], Awaitable[tuple[int, str]]]

# "Unicast reply from 10.0.0.5 [02:00:00:00:00:02]  0.712ms"
_REPLY = re.compile(r"reply from \S+ \[([0-9A-Fa-f:]{17})\]")
DAD_WAIT_S = 1


async def run_command(argv: Sequence[str]) -> tuple[int, str]:
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except FileNotFoundError as exc:
        raise BmsyncError(
            f"{argv[0]} is missing; install iproute2 and iputils-arping for the VIP checks"
        ) from exc
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode(errors="replace")


async def observe_vip(vip: VipConfig, run: Runner = run_command) -> VipSeen:
    """Whether ``vip.address`` is on ``vip.interface`` here, and the MACs of
    other hosts answering ARP for it."""
    status, out = await run(["ip", "-o", "-4", "addr", "show", "dev", vip.interface])
    if status != 0:
        raise BmsyncError(f"ha.vip.interface {vip.interface}: 'ip addr show' failed: {out.strip()}")
    held = any(
        field.split("/")[0] == vip.address for line in out.splitlines() for field in line.split()
    )
    # DAD mode (-D): asks from 0.0.0.0, so our own address does not answer
    # and any reply is another host claiming the VIP.
    _, out = await run(
        ["arping", "-D", "-c", "2", "-w", str(DAD_WAIT_S + 1), "-I", vip.interface, vip.address]
    )
    others = tuple(sorted({m.lower() for m in _REPLY.findall(out)}))
    return VipSeen(held=held, other_macs=others)
