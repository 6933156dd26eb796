"""Moving the floating IP: ``bmsync ha vip up`` and ``down``.

Up: check that no other host answers for the address (duplicate address
detection; ``--force`` overrides, logged), add ``address/prefix`` to the
interface unless it is there already, then announce it with ``arp_count``
gratuitous ARPs, ``arp_interval_ms`` apart, so that switches and
neighbours learn the new MAC at once. Down: remove every prefix of the
address from the interface. Both are idempotent. The commands are built by
pure functions (``--dry-run`` prints them); the tools run behind the
injected runner, as in ``vip``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from bmsync.config.model import VipConfig
from bmsync.core.errors import HaRefused
from bmsync.core.observations import VipCheckFailed
from bmsync.ha.vip import Runner, detect_argv, how, observe_vip, run_command, show_argv

log = structlog.get_logger("bmsync.ha")

Argv = list[str]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class VipCommands:
    """The commands of a VIP move, in the order they run."""

    show: Argv  # which prefixes of the address the interface holds
    detect: Argv  # who else answers ARP for it
    add: Argv
    announce: Argv  # one gratuitous ARP; sent arp_count times

    def remove(self, vip: VipConfig, prefix: int) -> Argv:
        return ["ip", "addr", "del", f"{vip.address}/{prefix}", "dev", vip.interface]


def vip_commands(vip: VipConfig) -> VipCommands:
    return VipCommands(
        show=show_argv(vip),
        detect=detect_argv(vip),
        add=["ip", "addr", "add", f"{vip.address}/{vip.prefix}", "dev", vip.interface],
        announce=["arping", "-U", "-c", "1", "-I", vip.interface, vip.address],
    )


def held_prefixes(vip: VipConfig, shown: str) -> list[int]:
    """The prefixes with which ``ip -o -4 addr show`` lists the address."""
    found = []
    for line in shown.splitlines():
        fields = line.split()
        for name, value in itertools.pairwise(fields):
            address, _, prefix = value.partition("/")
            if name == "inet" and address == vip.address and prefix.isdigit():
                found.append(int(prefix))
    return found


def up_plan(vip: VipConfig) -> list[Argv]:
    """What ``vip up`` runs when it has to do everything (``--dry-run``)."""
    commands = vip_commands(vip)
    return [commands.show, commands.detect, commands.add] + [commands.announce] * vip.arp_count


def down_plan(vip: VipConfig) -> list[Argv]:
    commands = vip_commands(vip)
    return [commands.show, commands.remove(vip, vip.prefix)]


async def vip_up(
    vip: VipConfig, run: Runner = run_command, *, force: bool = False, sleep: Sleep = asyncio.sleep
) -> str:
    """Hold the VIP here and announce it; what was done. HaRefused if
    another host answers for it (unless ``force``) or a tool fails."""
    commands = vip_commands(vip)
    seen = await observe_vip(vip, run)
    if isinstance(seen, VipCheckFailed):
        raise HaRefused(f"cannot check the VIP {vip.address}: {seen.reason}; fix that, then retry")
    if seen.other_macs:
        macs = ", ".join(seen.other_macs)
        if not force:
            raise HaRefused(
                f"{vip.address} already answers from {macs} on {vip.interface}: another host "
                "holds it. Bring it down there first ('bmsync ha vip down' on that node); "
                "--force only once that host is fenced or gone"
            )
        log.warning("vip_forced", address=vip.address, other_macs=list(seen.other_macs))
    already = seen.held
    if not already:
        await _must(run, commands.add)
        log.info("vip_added", address=f"{vip.address}/{vip.prefix}", interface=vip.interface)
    for sent in range(vip.arp_count):
        if sent:
            await sleep(vip.arp_interval_ms / 1000)
        await _must(run, commands.announce)
    log.info("vip_announced", address=vip.address, gratuitous_arps=vip.arp_count)
    where = f"{vip.address} on {vip.interface}"
    done = "already held" if already else f"added as {vip.address}/{vip.prefix}"
    return f"VIP {where}: {done}; {vip.arp_count} gratuitous ARP(s) sent"


async def vip_down(vip: VipConfig, run: Runner = run_command) -> str:
    """Release the VIP here (every prefix it is held with); what was done."""
    commands = vip_commands(vip)
    status, shown = await run(commands.show)
    if status != 0:
        raise HaRefused(f"'{' '.join(commands.show)}' failed ({how(status, shown)})")
    prefixes = held_prefixes(vip, shown)
    for prefix in prefixes:
        await _must(run, commands.remove(vip, prefix))
        log.info("vip_removed", address=f"{vip.address}/{prefix}", interface=vip.interface)
    if not prefixes:
        return f"VIP {vip.address} was not held on {vip.interface}; nothing to do"
    return f"VIP {vip.address} removed from {vip.interface}"


async def _must(run: Runner, argv: Sequence[str]) -> None:
    status, out = await run(argv)
    if status != 0:
        raise HaRefused(f"'{' '.join(argv)}' failed ({how(status, out)})")
