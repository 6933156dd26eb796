"""Property tests of the planner: any plan is executable and converges."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from bmsync.core.manifest import Entry, Kind, digest_bytes
from bmsync.core.ops import Delete, Mkdir, Op, PutFile, Rename, SetMeta, Symlink
from bmsync.core.paths import is_within, parent
from bmsync.core.planner import apply_ops, plan

TOP = b"etc"
NAMES = (b"a", b"b", b"c")
MAX_DEPTH = 3  # levels below etc: etc/a/b/c
CONTENTS = (b"", b"one", b"two", b"three")
TARGETS = (b"a", b"../b", b"/etc/c")

Tree = dict[bytes, Entry]


def file_entries() -> st.SearchStrategy[Entry]:
    return st.builds(
        lambda content, mode, uid, mtime, xattrs: Entry(
            Kind.FILE, mode, uid, 0, mtime, len(content), digest_bytes(content), xattrs=xattrs
        ),
        st.sampled_from(CONTENTS),
        st.sampled_from([0o644, 0o600]),
        st.sampled_from([0, 1000]),
        st.sampled_from([1, 2]),
        st.sampled_from([(), ((b"user.tag", b"x"),)]),
    )


def dir_entries() -> st.SearchStrategy[Entry]:
    return st.builds(
        lambda mode, uid, mtime, xattrs: Entry(Kind.DIR, mode, uid, 0, mtime, xattrs=xattrs),
        st.sampled_from([0o755, 0o700]),
        st.sampled_from([0, 1000]),
        st.sampled_from([1, 2]),
        st.sampled_from([(), ((b"system.posix_acl_default", b"\x02"),)]),
    )


def link_entries() -> st.SearchStrategy[Entry]:
    # what a scan yields on Linux: mode 0o777, no xattrs
    return st.builds(
        lambda target, uid, mtime: Entry(Kind.SYMLINK, 0o777, uid, 0, mtime, target=target),
        st.sampled_from(TARGETS),
        st.sampled_from([0, 1000]),
        st.sampled_from([1, 2]),
    )


def entry_of(kind: Kind) -> st.SearchStrategy[Entry]:
    return {Kind.FILE: file_entries, Kind.DIR: dir_entries, Kind.SYMLINK: link_entries}[kind]()


@st.composite
def trees(draw: st.DrawFn) -> Tree:
    """A valid tree: b"etc" is a directory and every path's parent is one."""
    tree: Tree = {TOP: draw(dir_entries())}

    def fill(directory: bytes, level: int) -> None:
        for name in NAMES:
            kind = draw(
                st.sampled_from([None, Kind.FILE, Kind.DIR, Kind.SYMLINK])
                if level < MAX_DEPTH
                else st.sampled_from([None, Kind.FILE, Kind.SYMLINK])
            )
            if kind is None:
                continue
            path = directory + b"/" + name
            tree[path] = draw(entry_of(kind))
            if kind == Kind.DIR:
                fill(path, level + 1)

    fill(TOP, 1)
    return tree


@st.composite
def variants(draw: st.DrawFn, base: Tree) -> Tree:
    """``base`` with some entries changed in place (content, metadata, or a
    file/symlink swap): same shape, so most paths compare as equal or close."""
    out = dict(base)
    for path in sorted(base):
        if not draw(st.booleans()):
            continue
        kind = base[path].kind
        if kind != Kind.DIR:
            kind = draw(st.sampled_from([Kind.FILE, Kind.SYMLINK]))
        out[path] = draw(entry_of(kind))
    return out


@st.composite
def moved(draw: st.DrawFn, base: Tree) -> Tree:
    """``base`` with one subtree moved to a free name in its parent directory
    (a rename of a directory moves every file below it), then perhaps changed."""
    out = dict(base)
    movable = sorted(p for p in base if p != TOP)
    if movable:
        src = draw(st.sampled_from(movable))
        up = parent(src)
        free = [n for n in NAMES if up + b"/" + n not in base]
        if free:
            dst = up + b"/" + draw(st.sampled_from(free))
            for path in sorted(base):
                if is_within(path, src):
                    out[dst + path[len(src) :]] = out.pop(path)
    return draw(variants(out)) if draw(st.booleans()) else out


@st.composite
def pairs(draw: st.DrawFn) -> tuple[Tree, Tree]:
    local = draw(trees())
    peer = draw(st.one_of(trees(), variants(local), moved(local)))
    if draw(st.booleans()):
        local, peer = peer, local
    return local, peer


def assert_valid_tree(tree: Tree) -> None:
    assert tree[TOP].kind == Kind.DIR
    for path in tree:
        if path != TOP:
            assert tree[parent(path)].kind == Kind.DIR


@settings(max_examples=300, deadline=None)
@given(pairs())
def test_plan_converges(manifests: tuple[Tree, Tree]) -> None:
    local, peer = manifests
    assert_valid_tree(local)
    assert_valid_tree(peer)
    ops = plan(local, peer)
    result = apply_ops(peer, ops)
    assert result == local
    assert plan(local, result) == []


@settings(max_examples=300, deadline=None)
@given(trees())
def test_identical_trees_plan_nothing(tree: Tree) -> None:
    assert plan(tree, dict(tree)) == []


@settings(max_examples=300, deadline=None)
@given(trees())
def test_plan_from_nothing_and_to_nothing(tree: Tree) -> None:
    ops = plan(tree, {})
    assert apply_ops({}, ops) == tree
    assert not any(isinstance(op, (Delete, Rename)) for op in ops)
    ops = plan({}, tree)
    assert apply_ops(tree, ops) == {}
    assert all(isinstance(op, Delete) for op in ops)


def destination(op: Op) -> bytes | None:
    """The path an op creates or changes (``None`` for a Delete)."""
    if isinstance(op, Rename):
        return op.dst
    if isinstance(op, Delete):
        return None
    return op.path


@settings(max_examples=300, deadline=None)
@given(pairs())
def test_one_op_per_destination(manifests: tuple[Tree, Tree]) -> None:
    local, peer = manifests
    ops = plan(local, peer)
    by_path: dict[bytes, list[Op]] = {}
    for op in ops:
        dst = destination(op)
        if dst is not None:
            by_path.setdefault(dst, []).append(op)
    for path, group in by_path.items():
        if len(group) == 1:
            continue
        assert len(group) == 2, (path, group)
        first, second = group
        assert isinstance(first, (Mkdir, Symlink, PutFile)), (path, group)
        assert isinstance(second, SetMeta), (path, group)
        assert second.entry.kind == Kind.DIR, (path, group)
    deleted = Counter(op.path for op in ops if isinstance(op, Delete))
    assert all(n == 1 for n in deleted.values()), deleted
    sources = Counter(op.src for op in ops if isinstance(op, Rename))
    assert all(n == 1 for n in sources.values()), sources


@settings(max_examples=300, deadline=None)
@given(pairs())
def test_plan_shape(manifests: tuple[Tree, Tree]) -> None:
    """Ops name only known paths, keep what is unchanged, and a rename moves
    a peer file that is going away to where its content is wanted."""
    local, peer = manifests
    ops = plan(local, peer)
    for op in ops:
        match op:
            case Mkdir(path=path, entry=entry) | SetMeta(path=path, entry=entry):
                assert local[path] == entry
            case PutFile(path=path, entry=entry) | Symlink(path=path, entry=entry):
                assert local[path] == entry
                assert entry.kind == (Kind.FILE if isinstance(op, PutFile) else Kind.SYMLINK)
            case Rename(src=src, dst=dst, entry=entry):
                assert local[dst] == entry
                assert src not in local
                assert peer[src].kind == Kind.FILE
                assert peer[src].digest == entry.digest
            case Delete(path=path, kind=kind):
                assert peer[path].kind == kind
                assert path not in local or local[path].kind != kind
    touched = {p for op in ops for p in ([op.src, op.dst] if isinstance(op, Rename) else [op.path])}
    for path, entry in local.items():
        if (
            path in peer
            and peer[path] == entry
            and not any(is_within(t, path) and t != path for t in touched)
        ):
            assert path not in touched, path
