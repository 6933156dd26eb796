"""The pure parts of a VIP move: what `ip` says is held, and the commands."""

from __future__ import annotations

from bmsync.config.model import VipConfig
from bmsync.ha.vip_move import down_plan, held_prefixes, up_plan

VIP = VipConfig("10.0.0.10", "eth0", prefix=24, arp_count=2)

SHOWN = """\
2: eth0    inet 10.0.0.2/24 brd 10.0.0.255 scope global eth0\\       valid_lft forever
2: eth0    inet 10.0.0.10/24 scope global secondary eth0\\       valid_lft forever
2: eth0    inet 10.0.0.10/32 scope global eth0\\       valid_lft forever
2: eth0    inet 10.0.0.100/24 scope global secondary eth0\\       valid_lft forever
"""


def test_every_prefix_the_address_is_held_with_and_no_other_address() -> None:
    assert held_prefixes(VIP, SHOWN) == [24, 32]
    assert held_prefixes(VIP, "") == []
    assert held_prefixes(VipConfig("10.0.0.1", "eth0"), SHOWN) == []  # 10.0.0.10 is not it


def test_the_plans_name_address_prefix_interface_and_arp_count() -> None:
    assert up_plan(VIP) == [
        ["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
        ["arping", "-D", "-c", "2", "-w", "2", "-I", "eth0", "10.0.0.10"],
        ["ip", "addr", "add", "10.0.0.10/24", "dev", "eth0"],
        ["arping", "-U", "-c", "1", "-I", "eth0", "10.0.0.10"],
        ["arping", "-U", "-c", "1", "-I", "eth0", "10.0.0.10"],
    ]
    assert down_plan(VIP)[-1] == ["ip", "addr", "del", "10.0.0.10/24", "dev", "eth0"]
