"""What the scans found that the daemon keeps between them: the special
files it reports (``bmsync status``), and the names of each hard-linked
file (a change through one name is sent for every name)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import structlog

from bmsync.core.paths import is_within, show

log = structlog.get_logger("bmsync.scan")


class UnsupportedFiles:
    """The FIFOs, sockets and device nodes in the sync set, as the latest
    scan covering each found them (the daemon's ``bmsync status``); each is
    logged once, when it is first found."""

    def __init__(self) -> None:
        self._paths: set[bytes] = set()

    def update(self, found: Iterable[bytes], scanned: Mapping[bytes, bool] | None = None) -> None:
        """``found`` by a scan of ``scanned`` (path -> with its subtree), or
        of the whole sync set (``None``)."""
        now = set(found)

        def rescanned(path: bytes) -> bool:
            return scanned is None or any(
                path == top or (deep and is_within(path, top)) for top, deep in scanned.items()
            )

        self._paths = {p for p in self._paths if p in now or not rescanned(p)}
        for path in sorted(now - self._paths):
            log.warning(
                "unsupported_file",
                path=show(path),
                detail="a FIFO, socket or device node: not synced, the peer's copy is left "
                "alone; add it to sync.exclude to silence this",
            )
            self._paths.add(path)

    def paths(self) -> list[str]:
        return [show(p) for p in sorted(self._paths)]


class LinkGroups:
    """The names of each regular file with hard links in the sync set, as
    the latest scan covering each found them. inotify reports a change
    under the name it was made through only: the daemon takes the other
    names of that inode with it (they changed too)."""

    def __init__(self) -> None:
        self._inode: dict[bytes, tuple[int, int]] = {}
        self._names: dict[tuple[int, int], set[bytes]] = {}

    def replace(self, links: Mapping[tuple[int, int], list[bytes]]) -> None:
        """After a scan of the whole sync set."""
        self._inode.clear()
        self._names.clear()
        self.update(links, scanned={})

    def update(
        self, links: Mapping[tuple[int, int], list[bytes]], scanned: Iterable[bytes]
    ) -> None:
        """``links`` found by a scan of ``scanned``: those paths now belong
        to the groups found, or to none."""
        for path in scanned:
            self._forget(path)
        for inode, names in links.items():
            for path in names:
                self._forget(path)
                self._inode[path] = inode
                self._names.setdefault(inode, set()).add(path)

    def _forget(self, path: bytes) -> None:
        inode = self._inode.pop(path, None)
        if inode is not None:
            names = self._names[inode]
            names.discard(path)
            if not names:
                del self._names[inode]

    def others(self, path: bytes) -> list[bytes]:
        """The other names of ``path``'s inode."""
        inode = self._inode.get(path)
        return [] if inode is None else sorted(self._names[inode] - {path})
