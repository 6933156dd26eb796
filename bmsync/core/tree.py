"""A manifest with a children index, for scoped planning.

The daemon keeps the peer's acknowledged manifest as a ``ManifestTree`` so
that "everything the peer has below this path" costs the size of that
subtree, not the size of the whole manifest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bmsync.core.manifest import Entry, Kind, manifest_digest
from bmsync.core.ops import Op
from bmsync.core.paths import ancestors, parent
from bmsync.core.planner import plan


class ManifestTree(Mapping[bytes, Entry]):
    def __init__(self, entries: Mapping[bytes, Entry] | None = None) -> None:
        self._entries: dict[bytes, Entry] = {}
        self._children: dict[bytes, set[bytes]] = {}
        for path, entry in (entries or {}).items():
            self.set(path, entry)

    @classmethod
    def owning(cls, entries: dict[bytes, Entry]) -> ManifestTree:
        """A tree over ``entries`` itself (no copy: 100,000 entries are not
        held twice); the caller gives it up. ``entries`` must be a whole
        manifest, every path's parent directory in it."""
        tree = cls()
        tree._entries = entries
        children = tree._children
        for path in entries:
            children.setdefault(parent(path), set()).add(path)
        return tree

    def __getitem__(self, path: bytes) -> Entry:
        return self._entries[path]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def set(self, path: bytes, entry: Entry | None) -> None:
        """Record ``entry`` at ``path`` (``None``: the path is gone). A path
        that stops being a directory loses its recorded subtree."""
        old = self._entries.get(path)
        if entry is None:
            if old is not None:
                self._drop(path)
            return
        if old is not None and old.kind == Kind.DIR and entry.kind != Kind.DIR:
            for child in list(self._children.get(path, ())):
                self._drop(child)
        self._entries[path] = entry
        self._children.setdefault(parent(path), set()).add(path)

    def _drop(self, path: bytes) -> None:
        for child in list(self._children.pop(path, ())):
            self._drop(child)
        del self._entries[path]
        siblings = self._children.get(parent(path))
        if siblings is not None:
            siblings.discard(path)
            if not siblings:
                del self._children[parent(path)]

    def subtree(self, path: bytes) -> Iterator[bytes]:
        """``path`` (if present) and every recorded path below it."""
        if path in self._entries:
            yield path
        stack = list(self._children.get(path, ()))
        while stack:
            current = stack.pop()
            yield current
            stack.extend(self._children.get(current, ()))

    def as_dict(self) -> dict[bytes, Entry]:
        return dict(self._entries)

    def digest(self) -> bytes:
        return manifest_digest(self._entries)


def plan_changes(
    local: Mapping[bytes, Entry], peer: ManifestTree, changed: Mapping[bytes, bool]
) -> list[Op]:
    """Plan only around the changed paths.

    ``local`` holds this node's entries for the changed paths, their
    subtrees where ``changed[path]`` is true (deep) or where the path is no
    longer a directory here, and their ancestor directories. The peer's side
    is cut to the same scope, so nothing outside it is touched.
    """
    scope: dict[bytes, Entry] = {}
    for path, deep in changed.items():
        here = local.get(path)
        if deep or here is None or here.kind != Kind.DIR:
            scope.update((p, peer[p]) for p in peer.subtree(path))
        elif path in peer:
            scope[path] = peer[path]
        for up in ancestors(path):
            mine = local.get(up)
            if mine is not None and mine.kind == Kind.DIR:
                if up in peer:
                    scope[up] = peer[up]
            elif up in peer:  # gone here, or no longer a directory: all of it
                scope.update((p, peer[p]) for p in peer.subtree(up))
    return plan(local, scope)
