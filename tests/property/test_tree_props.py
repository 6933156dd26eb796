"""Property tests of the children-indexed manifest and of scoped planning.

``ManifestTree`` is checked against a plain dict and a brute-force subtree
filter; ``plan_changes`` against what the whole-tree planner guarantees,
restricted to the scope of the changed paths."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from bmsync.core.manifest import Entry, Kind, digest_bytes
from bmsync.core.ops import Delete, Mkdir, Op, PutFile, Rename, SetMeta, Symlink
from bmsync.core.paths import ancestors, parent
from bmsync.core.planner import apply_ops, plan
from bmsync.core.tree import ManifestTree, plan_changes
from tests.property.test_planner_props import (
    NAMES,
    TOP,
    Tree,
    dir_entries,
    entry_of,
    pairs,
    trees,
)

# paths that are never in a generated tree, to ask the index about absent paths
GHOSTS = (b"etc/zz", b"etc/a/zz", b"etc/a/b/zz", b"etcetera", b"etc/a/b/c/zz")


def below(keys: list[bytes] | set[bytes] | Tree, top: bytes) -> set[bytes]:
    """Brute force: ``top`` and the recorded paths below it."""
    return {p for p in keys if p == top or p.startswith(top + b"/")}


def check_index(tree: ManifestTree, model: Tree) -> None:
    """``tree`` holds exactly ``model``, and every subtree query agrees with
    the brute-force filter (``model`` is a valid tree)."""
    assert tree.as_dict() == model
    assert dict(tree) == model
    assert len(tree) == len(model)
    assert set(tree) == set(model)
    for path in [*model, *GHOSTS, *(p + b"/zz" for p in model)]:
        found = list(tree.subtree(path))
        assert len(found) == len(set(found)), (path, found)
        assert set(found) == below(model, path), path
        assert (path in tree) == (path in model)
    assert set(tree.subtree(b"")) == set(model)  # everything is below the root


def record(tree: ManifestTree, op: Op) -> None:
    """What the daemon records in the peer's tree once ``op`` is acknowledged."""
    match op:
        case Rename(src=src, dst=dst, entry=entry):
            tree.set(src, None)
            tree.set(dst, entry)
        case Delete(path=path):
            tree.set(path, None)
        case Mkdir(path=path, entry=entry) | PutFile(path=path, entry=entry):
            tree.set(path, entry)
        case Symlink(path=path, entry=entry) | SetMeta(path=path, entry=entry):
            tree.set(path, entry)


# -- ManifestTree ----------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(trees(), st.randoms(use_true_random=False))
def test_tree_index_does_not_depend_on_insertion_order(model: Tree, rnd: random.Random) -> None:
    items = list(model.items())
    rnd.shuffle(items)
    check_index(ManifestTree(dict(items)), model)
    check_index(ManifestTree.owning(dict(items)), model)


@settings(max_examples=300, deadline=None)
@given(pairs())
def test_tree_follows_a_plan_step_by_step(manifests: tuple[Tree, Tree]) -> None:
    """Record a plan's ops one at a time (each step keeps the tree valid, as
    ``apply_ops`` checks): the index matches a dict after every step."""
    local, peer = manifests
    tree = ManifestTree(peer)
    model = dict(peer)
    check_index(tree, model)
    for op in plan(local, peer):
        model = apply_ops(model, [op])
        record(tree, op)
        check_index(tree, model)
    assert model == local


@st.composite
def mutations(draw: st.DrawFn) -> tuple[Tree, list[tuple[bytes, Entry | None]]]:
    """A valid tree and a sequence of ``set`` calls that keeps it valid:
    replace an entry (a directory that becomes a file or a symlink loses its
    subtree), remove a path with its subtree, or add a child to a directory."""
    start = draw(trees())
    model = dict(start)
    steps: list[tuple[bytes, Entry | None]] = []
    for _ in range(draw(st.integers(0, 12))):
        action = draw(st.sampled_from(["replace", "remove", "add", "add"]))
        if action == "add":
            dirs = sorted(p for p, e in model.items() if e.kind == Kind.DIR)
            if not dirs:
                if TOP in model:
                    continue
                path, entry = TOP, draw(dir_entries())
            else:
                top = draw(st.sampled_from(dirs))
                path = top + b"/" + draw(st.sampled_from([*NAMES, b"d", b"e"]))
                kind = draw(st.sampled_from([Kind.FILE, Kind.DIR, Kind.SYMLINK]))
                entry = draw(entry_of(kind))
        elif not model:
            continue
        else:
            path = draw(st.sampled_from(sorted(model)))
            if action == "remove":
                entry = None
            else:
                entry = draw(entry_of(draw(st.sampled_from(list(Kind)))))
        steps.append((path, entry))
        old = model.get(path)
        if entry is None or (old is not None and old.kind == Kind.DIR and entry.kind != Kind.DIR):
            for gone in below(model, path):
                del model[gone]
        if entry is not None:
            model[path] = entry
    return start, steps


@settings(max_examples=300, deadline=None)
@given(mutations())
def test_tree_matches_a_dict_under_valid_mutations(
    case: tuple[Tree, list[tuple[bytes, Entry | None]]],
) -> None:
    start, steps = case
    tree = ManifestTree(start)
    model = dict(start)
    for path, entry in steps:
        old = model.get(path)
        expect = dict(model)
        if entry is None or (old is not None and old.kind == Kind.DIR and entry.kind != Kind.DIR):
            for gone in below(model, path):
                del expect[gone]
        if entry is not None:
            expect[path] = entry
        tree.set(path, entry)
        model = expect
        check_index(tree, model)


@settings(max_examples=300, deadline=None)
@given(trees(), st.data())
def test_set_drops_a_subtree_only_when_the_directory_goes(model: Tree, data: st.DataObject) -> None:
    """A directory that becomes a file or a symlink loses its recorded
    subtree (and stays empty if it becomes a directory again); a removed
    path takes its subtree along; a directory's new metadata keeps it."""
    dirs = sorted(p for p, e in model.items() if e.kind == Kind.DIR)
    path = data.draw(st.sampled_from(dirs))
    tree = ManifestTree(model)
    rest = {p: e for p, e in model.items() if p not in below(model, path)}
    match data.draw(st.sampled_from(["not a dir", "removed", "metadata"])):
        case "not a dir":
            entry = data.draw(entry_of(data.draw(st.sampled_from([Kind.FILE, Kind.SYMLINK]))))
            tree.set(path, entry)
            check_index(tree, rest | {path: entry})
            assert list(tree.subtree(path)) == [path]
            tree.set(path, data.draw(dir_entries()))
            assert list(tree.subtree(path)) == [path]
        case "removed":
            tree.set(path, None)
            check_index(tree, rest)
            tree.set(path, None)  # twice is harmless
            tree.set(data.draw(st.sampled_from(GHOSTS)), None)
            check_index(tree, rest)
        case _:
            entry = data.draw(dir_entries())
            tree.set(path, entry)
            check_index(tree, model | {path: entry})


# -- plan_changes ------------------------------------------------------------


def local_subset(local: Tree, changed: dict[bytes, bool]) -> Tree:
    """What the daemon reads for a batch: each changed path, its subtree when
    deep or when it is not (or no longer) a directory here, and its
    ancestors present here."""
    out: Tree = {}
    for path, deep in changed.items():
        here = local.get(path)
        if here is not None:
            out[path] = here
        if deep or here is None or here.kind != Kind.DIR:
            out.update((p, local[p]) for p in below(local, path))
        for up in ancestors(path):
            if up in local:
                out[up] = local[up]
    return out


def scope_of(local: Tree, peer: Tree, changed: dict[bytes, bool]) -> set[bytes]:
    """The paths a batch is about: where the peer must end up like local.
    An ancestor that is gone here, or is no directory here, takes the peer's
    whole subtree of it along."""
    scope: set[bytes] = set()
    for path, deep in changed.items():
        scope.add(path)
        here = local.get(path)
        if deep or here is None or here.kind != Kind.DIR:
            scope |= below(local, path) | below(peer, path)
        for up in ancestors(path):
            scope.add(up)
            if up not in local or local[up].kind != Kind.DIR:
                scope |= below(peer, up)
    return scope


def ghost_children(local: Tree, peer: Tree) -> list[bytes]:
    """Paths on neither side whose parent is a directory on one side: a
    file created and deleted again before its batch was taken."""
    return sorted(
        {p + b"/zz" for tree in (local, peer) for p, e in tree.items() if e.kind == Kind.DIR}
    )


@st.composite
def changes(draw: st.DrawFn) -> tuple[Tree, Tree, dict[bytes, bool]]:
    local, peer = draw(pairs())
    known = sorted(set(local) | set(peer))
    pool = st.one_of(st.sampled_from(known), st.sampled_from(ghost_children(local, peer)))
    changed = draw(st.dictionaries(pool, st.booleans(), min_size=1, max_size=6))
    return local, peer, changed


def run_changes(local: Tree, peer: Tree, changed: dict[bytes, bool]) -> dict[bytes, Entry]:
    ops = plan_changes(local_subset(local, changed), ManifestTree(peer), changed)
    return apply_ops(peer, ops)


@settings(max_examples=300, deadline=None)
@given(changes())
def test_plan_changes_makes_the_scope_like_local_and_leaves_the_rest(
    case: tuple[Tree, Tree, dict[bytes, bool]],
) -> None:
    local, peer, changed = case
    result = run_changes(local, peer, changed)
    scope = scope_of(local, peer, changed)
    for path in scope:
        assert result.get(path) == local.get(path), path
    for path in (set(peer) | set(result)) - scope:
        before, after = peer.get(path), result.get(path)
        if after == before:
            continue
        assert before is not None
        assert after is not None, path
        assert before.kind == after.kind == Kind.DIR, path
        assert after == local.get(path), path
    # done: the same batch again plans nothing
    subset = local_subset(local, changed)
    assert plan_changes(subset, ManifestTree(result), changed) == []


@settings(max_examples=300, deadline=None)
@given(pairs(), st.data())
def test_plan_changes_over_everything_converges(
    manifests: tuple[Tree, Tree], data: st.DataObject
) -> None:
    """Every path changed, deep: the same plan as the whole-tree planner.
    A deep change on the top directory alone covers everything too."""
    local, peer = manifests
    changed = dict.fromkeys(set(local) | set(peer), True)
    assert local_subset(local, changed) == local
    ops = plan_changes(local, ManifestTree(peer), changed)
    assert ops == plan(local, peer)
    assert apply_ops(peer, ops) == local
    top = {TOP: True} | {
        p: data.draw(st.booleans()) for p in sorted(set(local) | set(peer)) if parent(p) == TOP
    }
    assert local_subset(local, top) == local
    assert apply_ops(peer, plan_changes(local, ManifestTree(peer), top)) == local


def d(mtime: int = 1) -> Entry:
    return Entry(Kind.DIR, 0o755, 0, 0, mtime)


def f(content: bytes) -> Entry:
    return Entry(Kind.FILE, 0o644, 0, 0, 1, len(content), digest_bytes(content))


def test_change_below_a_directory_that_became_a_file() -> None:
    """``etc/a`` was a directory and is a file now; the batch names only
    ``etc/a/b`` (the event on ``etc/a`` comes in a later batch). The peer
    must end up with the file, not be sent a plan it cannot run (this used to
    delete the peer's ``etc/a`` while ``etc/a/c`` was still in it)."""
    local = {b"etc": d(), b"etc/a": f(b"now a file")}
    peer = {b"etc": d(), b"etc/a": d(), b"etc/a/b": f(b"b"), b"etc/a/c": f(b"c")}
    changed = {b"etc/a/b": False}
    assert local_subset(local, changed) == local
    result = run_changes(local, peer, changed)
    assert result == local
