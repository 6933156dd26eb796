"""``bmsync verify`` and the final check of a switchover: this node's tree
and the peer's, compared path by path, every file read on both sides."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bmsync.core.excludes import SyncSet
from bmsync.core.manifest import Entry, differences
from bmsync.core.paths import is_within
from bmsync.fs.scan import Scan, scan_tree
from bmsync.link.session import PeerSession


def peer_scope(peer: Mapping[bytes, Entry], scan: Scan) -> Mapping[bytes, Entry]:
    """The peer's manifest minus what the planner must not delete: copies of
    sync paths missing here, and paths this node failed to read."""
    keep = [*scan.missing_tops, *scan.unsupported, *(p for p, _ in scan.problems)]
    if not keep:
        return peer
    return {p: e for p, e in peer.items() if not any(is_within(p, k) for k in keep)}


async def verify(
    session: PeerSession, root: Path, syncset: SyncSet
) -> tuple[list[tuple[bytes, list[str]]], Scan]:
    """Differences between this node's tree and the peer's, path by path:
    every file on both sides is read (no digest cache)."""
    fetched = await session.fetch_manifest(fresh=True)
    scan = scan_tree(root, syncset)
    peer = peer_scope(fetched, scan)
    found = []
    for path in sorted(scan.entries.keys() | peer.keys()):
        what = differences(scan.entries.get(path), peer.get(path))
        if what:
            found.append((path, what))
    for path in scan.unsupported:
        # skipped, so the peer keeps what it had there: not the same tree
        if (theirs := fetched.get(path)) is not None:
            kind = theirs.kind.name.lower()
            found.append((path, [f"a FIFO, socket or device node here, a {kind} on the peer"]))
    return found, scan
