"""Planning: the local manifest against the peer's, as ordered operations.

Order matters on a real filesystem, so the plan is built in phases:

1. remove peer files and symlinks standing where a directory must go;
2. create missing directories, parents before children;
3. move peer files whose content is wanted at a new path (a rename is
   cheaper than a resend, and keeps the old path's inode out of the way);
4. delete what the peer has and the local tree does not, children before
   parents (and peer directories where a file or symlink must go);
5. send files and symlinks whose content differs, fix metadata of the rest
   (files and symlinks are replaced by a rename, so their path never
   disappears in between, even when the kind changes);
6. set directory metadata last, deepest first, since creating and deleting
   children changes a directory's mtime.

``apply_ops`` runs a plan against a manifest with the filesystem's rules (no
file in a missing directory, no removing a non-empty directory, ...): the
property tests use it to show that any plan is executable and converges.
"""

from __future__ import annotations

from collections.abc import Callable

from bmsync.core.manifest import Entry, Kind, Manifest
from bmsync.core.ops import Delete, Mkdir, Op, PutFile, Rename, SetMeta, Symlink, op_paths
from bmsync.core.paths import depth, is_within, parent, show


def _shallow_first(path: bytes) -> tuple[int, bytes]:
    return (depth(path), path)


def _deep_first(path: bytes) -> tuple[int, bytes]:
    return (-depth(path), path)


def plan(local: Manifest, peer: Manifest) -> list[Op]:
    if local == peer:  # the usual reconcile; a C-level comparison, no Python loop
        return []
    ops: list[Op] = []

    def local_kind(path: bytes) -> Kind | None:
        entry = local.get(path)
        return None if entry is None else entry.kind

    # 1. a file or symlink on the peer where a directory must go
    cleared = {p for p, e in peer.items() if e.kind != Kind.DIR and local_kind(p) == Kind.DIR}
    ops.extend(Delete(p, peer[p].kind) for p in sorted(cleared))

    # 2. missing directories
    made = sorted(
        (
            p
            for p, e in local.items()
            if e.kind == Kind.DIR and (p not in peer or peer[p].kind != Kind.DIR)
        ),
        key=_shallow_first,
    )
    ops.extend(Mkdir(p, local[p]) for p in made)

    # 3. moves: a peer file that is going away holds content wanted elsewhere
    sources: dict[bytes, list[bytes]] = {}
    for p in sorted(peer, reverse=True):
        e = peer[p]
        if e.kind == Kind.FILE and p not in local:
            sources.setdefault(e.digest, []).append(p)
    moved: dict[bytes, bytes] = {}  # dst -> src
    for p in sorted(local):
        e = local[p]
        if e.kind != Kind.FILE:
            continue
        current = peer.get(p)
        if current is not None and (current.kind == Kind.DIR or current.same_content(e)):
            continue
        candidates = sources.get(e.digest)
        if candidates:
            src = candidates.pop()
            moved[p] = src
            ops.append(Rename(src, p, e))

    # 4. deletions
    used_sources = set(moved.values())
    doomed = [
        p
        for p, e in peer.items()
        if p not in cleared
        and p not in used_sources
        and (p not in local or (e.kind == Kind.DIR and local[p].kind != Kind.DIR))
    ]
    ops.extend(Delete(p, peer[p].kind) for p in sorted(doomed, key=_deep_first))
    gone = set(doomed) | cleared

    # 5. files and symlinks
    for p in sorted(local):
        e = local[p]
        if e.kind == Kind.DIR or p in moved:
            continue
        current = None if p in gone else peer.get(p)
        if current is None or not e.same_content(current):
            ops.append(PutFile(p, e) if e.kind == Kind.FILE else Symlink(p, e))
        elif not e.same_meta(current):
            ops.append(SetMeta(p, e))

    # 6. directory metadata
    touched = {parent(path) for op in ops for path in op_paths(op)}
    for p in sorted((p for p, e in local.items() if e.kind == Kind.DIR), key=_deep_first):
        current = peer.get(p)
        if p in touched or current is None or p in made or not local[p].same_meta(current):
            ops.append(SetMeta(p, local[p]))
    return ops


class PlanViolation(ValueError):
    """A plan step the filesystem would reject (a planner bug)."""


def apply_ops(
    manifest: Manifest,
    ops: list[Op],
    implied: Callable[[bytes], bool] = lambda path: False,
) -> dict[bytes, Entry]:
    """Return ``manifest`` after ``ops``, enforcing the filesystem's rules.

    ``implied`` says which directories outside the manifest exist anyway
    (the root and the parents of the sync paths).
    """
    tree = dict(manifest)

    def need_parent(path: bytes) -> None:
        up = parent(path)
        if up and not implied(up) and (up not in tree or tree[up].kind != Kind.DIR):
            raise PlanViolation(f"{show(path)}: parent directory missing")

    def need_not_dir(path: bytes) -> None:
        if path in tree and tree[path].kind == Kind.DIR:
            raise PlanViolation(f"{show(path)}: a directory is in the way")

    for op in ops:
        match op:
            case Mkdir(path=path, entry=entry):
                need_parent(path)
                if path in tree:
                    raise PlanViolation(f"{show(path)}: exists, cannot mkdir")
                tree[path] = entry
            case PutFile(path=path, entry=entry) | Symlink(path=path, entry=entry):
                need_parent(path)
                need_not_dir(path)
                tree[path] = entry
            case Rename(src=src, dst=dst, entry=entry):
                if src not in tree or tree[src].kind != Kind.FILE:
                    raise PlanViolation(f"{show(src)}: no file to move")
                if tree[src].digest != entry.digest:
                    raise PlanViolation(f"{show(src)}: content differs from the move's")
                need_parent(dst)
                need_not_dir(dst)
                del tree[src]
                tree[dst] = entry
            case Delete(path=path, kind=kind):
                if path not in tree or tree[path].kind != kind:
                    raise PlanViolation(f"{show(path)}: no {kind.name.lower()} to delete")
                if kind == Kind.DIR and any(
                    other != path and is_within(other, path) for other in tree
                ):
                    raise PlanViolation(f"{show(path)}: directory not empty")
                del tree[path]
            case SetMeta(path=path, entry=entry):
                if path not in tree or not tree[path].same_content(entry):
                    raise PlanViolation(f"{show(path)}: metadata for missing content")
                tree[path] = entry
    return tree
