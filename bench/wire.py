"""Bytes on the wire, counted the same way for every tool: nftables counters.

One table of our own (``inet bmbench<pid>``) with one chain on the output
hook and two counting rules, ``tcp dport PORT`` (client -> sshd) and
``tcp sport PORT`` (sshd -> client). On loopback every packet passes the
output hook exactly once, so the two counters see each packet of the SSH
connections to the private sshd once. The figure is IP packet bytes (IP and
TCP headers included, as nft's ``counter`` counts them); only the tool being
measured talks to that port while it is measured. The table is deleted by
``WireCounter.delete`` (call it in a ``finally``).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

NFT = "nft"
NFT_TIMEOUT_S = 10.0
HOW = (
    "nftables counters on the private sshd's port (own table, output hook, "
    "'tcp dport PORT' + 'tcp sport PORT'): IP bytes both ways, headers included, "
    "SSH handshake included"
)


class WireError(Exception):
    pass


@dataclass(frozen=True)
class WireBytes:
    to_sshd: int = 0
    from_sshd: int = 0
    packets: int = 0

    @property
    def total(self) -> int:
        return self.to_sshd + self.from_sshd

    def __sub__(self, other: WireBytes) -> WireBytes:
        return WireBytes(
            self.to_sshd - other.to_sshd,
            self.from_sshd - other.from_sshd,
            self.packets - other.packets,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "to_sshd": self.to_sshd,
            "from_sshd": self.from_sshd,
            "packets": self.packets,
        }


def _nft(*args: str, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            [NFT, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WireError(f"nft {' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        raise WireError(f"nft {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


class WireCounter:
    def __init__(self, port: int, table: str | None = None) -> None:
        self.port = port
        self.table = table or f"bmbench{os.getpid()}"
        self._created = False

    def create(self) -> None:
        _nft(
            "-f",
            "-",
            stdin=(
                f"table inet {self.table} {{\n"
                "  chain out {\n"
                "    type filter hook output priority 0; policy accept;\n"
                f'    tcp dport {self.port} counter comment "to_sshd"\n'
                f'    tcp sport {self.port} counter comment "from_sshd"\n'
                "  }\n"
                "}\n"
            ),
        )
        self._created = True

    def read(self) -> WireBytes:
        listing = json.loads(_nft("-j", "list", "table", "inet", self.table))
        counts: dict[str, tuple[int, int]] = {}
        for item in listing.get("nftables", []):
            rule = item.get("rule")
            if rule is None:
                continue
            for expr in rule.get("expr", []):
                if "counter" in expr:
                    c = expr["counter"]
                    counts[rule.get("comment", "")] = (int(c["bytes"]), int(c["packets"]))
        if set(counts) != {"to_sshd", "from_sshd"}:
            raise WireError(f"table inet {self.table}: unexpected rules {sorted(counts)}")
        return WireBytes(
            counts["to_sshd"][0],
            counts["from_sshd"][0],
            counts["to_sshd"][1] + counts["from_sshd"][1],
        )

    def delete(self) -> None:
        if self._created:
            _nft("delete", "table", "inet", self.table)
            self._created = False
