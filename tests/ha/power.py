"""What "powered off" means for a test node (tests/ha/nodes.py): every
process of the node is killed with SIGKILL, then the node's persistent
mount namespace is released, so that its mounts go with it, as a machine
that loses power holds no process and no mount.

A node's processes are those in its mount namespace (each is started
through ``nsenter --mount=FILE``, and what they start inherits it): found
by namespace, never by name. Standard library only: the node's BMC (an
``ipmi_sim`` chassis script) runs this file as a script,
``python3 power.py off FILE NETNS``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

KILL_DEADLINE_S = 10.0


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def is_live(nsfile: Path) -> bool:
    """Whether ``nsfile`` holds a mount namespace (an nsfs bind mount) here."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        sep = fields.index("-")
        if _unescape(fields[4]) == str(nsfile) and fields[sep + 1] == "nsfs":
            return True
    return False


def pids_in(nsfile: Path) -> list[int]:
    """The processes whose mount namespace is the one bound on ``nsfile``
    (zombies hold no namespace and are not listed)."""
    wanted = f"mnt:[{os.stat(nsfile).st_ino}]"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/ns/mnt") == wanted:
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or a zombie
            continue
    return found


def power_off(
    nsfile: Path, netns: str | None = None, deadline_s: float = KILL_DEADLINE_S
) -> list[int]:
    """SIGKILL every process of the node until none is left (a process
    forking meanwhile is caught on the next pass), then unmount ``nsfile``:
    the namespace, with no process and no file left, is freed by the kernel
    with every mount in it. ``netns``: the node's network namespace, whose
    addresses are flushed (a machine without power answers no ARP, so the
    VIP it held can be taken without --force; its links stay up, as the
    switch port of the peer does). The pids killed; nothing if already off."""
    if netns is not None:
        flush = ["ip", "-n", netns, "addr", "flush", "scope", "global"]
        subprocess.run(flush, check=True, capture_output=True, timeout=30)
    if not is_live(nsfile):
        return []
    killed: list[int] = []
    deadline = time.monotonic() + deadline_s
    while pids := pids_in(nsfile):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of {nsfile} survive SIGKILL: {pids}")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            if pid not in killed:
                killed.append(pid)
        time.sleep(0.01)
    subprocess.run(["umount", str(nsfile)], check=True, capture_output=True, timeout=30)
    return killed


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4) or argv[1] != "off":
        print(f"usage: {argv[0]} off NSFILE [NETNS]", file=sys.stderr)
        return 2
    killed = power_off(Path(argv[2]), argv[3] if len(argv) == 4 else None)
    print(f"{time.time():.3f} power off {argv[2]}: killed {killed}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
