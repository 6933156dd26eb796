"""The planner on hand-written cases; every plan is also run by apply_ops."""

from __future__ import annotations

from bmsync.core.manifest import Entry, Kind, Manifest, digest_bytes
from bmsync.core.ops import Delete, Mkdir, Op, PutFile, Rename, SetMeta, Symlink, op_paths
from bmsync.core.paths import is_within
from bmsync.core.planner import apply_ops, plan


def f(content: bytes, mode: int = 0o644, uid: int = 0, mtime: int = 1) -> Entry:
    return Entry(Kind.FILE, mode, uid, 0, mtime, len(content), digest_bytes(content))


def d(mode: int = 0o755, uid: int = 0, mtime: int = 1) -> Entry:
    return Entry(Kind.DIR, mode, uid, 0, mtime)


def ln(target: bytes, uid: int = 0, mtime: int = 1) -> Entry:
    return Entry(Kind.SYMLINK, 0o777, uid, 0, mtime, target=target)


def converge(local: Manifest, peer: Manifest) -> list[Op]:
    """Plan, run the plan on the peer, and check it now equals local."""
    ops = plan(local, peer)
    result = apply_ops(peer, ops)
    assert result == dict(local)
    assert plan(local, result) == []
    return ops


def index(ops: list[Op], cls: type, path: bytes) -> int:
    return next(i for i, op in enumerate(ops) if isinstance(op, cls) and path in op_paths(op))


def test_identical_manifests_plan_nothing() -> None:
    tree = {
        b"etc": d(),
        b"etc/a": f(b"a"),
        b"etc/sub": d(mode=0o700),
        b"etc/sub/l": ln(b"../a"),
    }
    assert converge(tree, dict(tree)) == []
    assert plan({}, {}) == []


def test_empty_peer_gets_the_whole_tree_in_order() -> None:
    local = {
        b"etc": d(),
        b"etc/a": d(),
        b"etc/a/b": d(mode=0o700),
        b"etc/a/b/g": f(b"g"),
        b"etc/a/l": ln(b"b/g"),
        b"etc/f": f(b"f"),
    }
    ops = converge(local, {})
    assert ops == [
        Mkdir(b"etc", local[b"etc"]),
        Mkdir(b"etc/a", local[b"etc/a"]),
        Mkdir(b"etc/a/b", local[b"etc/a/b"]),
        PutFile(b"etc/a/b/g", local[b"etc/a/b/g"]),
        Symlink(b"etc/a/l", local[b"etc/a/l"]),
        PutFile(b"etc/f", local[b"etc/f"]),
        SetMeta(b"etc/a/b", local[b"etc/a/b"]),
        SetMeta(b"etc/a", local[b"etc/a"]),
        SetMeta(b"etc", local[b"etc"]),
    ]


def test_deleting_a_tree_deletes_children_before_parents() -> None:
    local = {b"etc": d()}
    peer = {
        b"etc": d(),
        b"etc/a": d(),
        b"etc/a/b": d(),
        b"etc/a/b/f": f(b"f"),
        b"etc/a/g": f(b"g"),
        b"etc/l": ln(b"a"),
    }
    ops = converge(local, peer)
    deletes = [op for op in ops if isinstance(op, Delete)]
    assert {op.path for op in deletes} == set(peer) - {b"etc"}
    for i, op in enumerate(deletes):
        assert op.kind == peer[op.path].kind
        for later in deletes[i + 1 :]:
            assert not is_within(later.path, op.path), f"{later.path!r} after {op.path!r}"
    assert ops[-1] == SetMeta(b"etc", local[b"etc"])
    assert not any(isinstance(op, (PutFile, Mkdir, Symlink, Rename)) for op in ops)


def test_moved_file_is_renamed_not_resent() -> None:
    content = b"moved content"
    local = {b"etc": d(), b"etc/new": d(), b"etc/new/f": f(content, mtime=5)}
    peer = {b"etc": d(), b"etc/old": d(), b"etc/old/f": f(content, mtime=3)}
    ops = converge(local, peer)
    assert Rename(b"etc/old/f", b"etc/new/f", local[b"etc/new/f"]) in ops
    assert not any(isinstance(op, PutFile) for op in ops)
    assert Delete(b"etc/old/f", Kind.FILE) not in ops
    assert Delete(b"etc/old", Kind.DIR) in ops
    assert index(ops, Mkdir, b"etc/new") < index(ops, Rename, b"etc/new/f")
    assert index(ops, Rename, b"etc/old/f") < index(ops, Delete, b"etc/old")


def test_renamed_file_in_the_same_directory() -> None:
    local = {b"etc": d(), b"etc/b": f(b"x")}
    peer = {b"etc": d(), b"etc/a": f(b"x")}
    ops = converge(local, peer)
    assert ops == [Rename(b"etc/a", b"etc/b", local[b"etc/b"]), SetMeta(b"etc", local[b"etc"])]


def test_one_source_serves_one_destination_the_others_are_sent() -> None:
    local = {b"etc": d(), b"etc/x": f(b"same"), b"etc/y": f(b"same")}
    peer = {b"etc": d(), b"etc/old": f(b"same")}
    ops = converge(local, peer)
    renames = [op for op in ops if isinstance(op, Rename)]
    puts = [op for op in ops if isinstance(op, PutFile)]
    assert len(renames) == 1
    assert len(puts) == 1
    assert {renames[0].dst, puts[0].path} == {b"etc/x", b"etc/y"}
    assert not any(isinstance(op, Delete) for op in ops)


def test_rename_replaces_a_file_with_other_content() -> None:
    local = {b"etc": d(), b"etc/a": f(b"new")}
    peer = {b"etc": d(), b"etc/a": f(b"old"), b"etc/b": f(b"new")}
    ops = converge(local, peer)
    assert Rename(b"etc/b", b"etc/a", local[b"etc/a"]) in ops
    assert not any(isinstance(op, (PutFile, Delete)) for op in ops)


def test_content_change_is_resent() -> None:
    local = {b"etc": d(), b"etc/a": f(b"new")}
    peer = {b"etc": d(), b"etc/a": f(b"old")}
    ops = converge(local, peer)
    assert ops[0] == PutFile(b"etc/a", local[b"etc/a"])
    assert not any(isinstance(op, Delete) for op in ops)


def test_file_becomes_a_directory() -> None:
    local = {b"etc": d(), b"etc/x": d(), b"etc/x/y": f(b"y")}
    peer = {b"etc": d(), b"etc/x": f(b"was a file")}
    ops = converge(local, peer)
    assert ops[:3] == [
        Delete(b"etc/x", Kind.FILE),
        Mkdir(b"etc/x", local[b"etc/x"]),
        PutFile(b"etc/x/y", local[b"etc/x/y"]),
    ]


def test_symlink_becomes_a_directory() -> None:
    local = {b"etc": d(), b"etc/x": d()}
    peer = {b"etc": d(), b"etc/x": ln(b"/tmp")}
    ops = converge(local, peer)
    assert index(ops, Delete, b"etc/x") < index(ops, Mkdir, b"etc/x")
    assert Delete(b"etc/x", Kind.SYMLINK) in ops


def test_directory_becomes_a_file() -> None:
    local = {b"etc": d(), b"etc/x": f(b"now a file")}
    peer = {b"etc": d(), b"etc/x": d(), b"etc/x/y": f(b"y"), b"etc/x/z": d()}
    ops = converge(local, peer)
    assert index(ops, Delete, b"etc/x/y") < index(ops, Delete, b"etc/x")
    assert index(ops, Delete, b"etc/x/z") < index(ops, Delete, b"etc/x")
    assert index(ops, Delete, b"etc/x") < index(ops, PutFile, b"etc/x")


def test_directory_becomes_a_file_with_content_from_inside() -> None:
    local = {b"etc": d(), b"etc/x": f(b"y")}
    peer = {b"etc": d(), b"etc/x": d(), b"etc/x/y": f(b"y")}
    converge(local, peer)


def test_directory_becomes_a_symlink() -> None:
    local = {b"etc": d(), b"etc/x": ln(b"elsewhere")}
    peer = {b"etc": d(), b"etc/x": d(), b"etc/x/y": ln(b"z")}
    ops = converge(local, peer)
    assert index(ops, Delete, b"etc/x") < index(ops, Symlink, b"etc/x")


def test_symlink_becomes_a_file_without_a_delete() -> None:
    local = {b"etc": d(), b"etc/l": f(b"content")}
    peer = {b"etc": d(), b"etc/l": ln(b"target")}
    ops = converge(local, peer)
    assert PutFile(b"etc/l", local[b"etc/l"]) in ops
    assert not any(isinstance(op, Delete) for op in ops)


def test_file_becomes_a_symlink_without_a_delete() -> None:
    local = {b"etc": d(), b"etc/l": ln(b"target")}
    peer = {b"etc": d(), b"etc/l": f(b"content")}
    ops = converge(local, peer)
    assert Symlink(b"etc/l", local[b"etc/l"]) in ops
    assert not any(isinstance(op, Delete) for op in ops)


def test_symlink_becomes_a_file_by_rename() -> None:
    local = {b"etc": d(), b"etc/l": f(b"content")}
    peer = {b"etc": d(), b"etc/l": ln(b"target"), b"etc/m": f(b"content")}
    ops = converge(local, peer)
    assert Rename(b"etc/m", b"etc/l", local[b"etc/l"]) in ops
    assert not any(isinstance(op, (Delete, PutFile)) for op in ops)


def test_symlink_target_change() -> None:
    local = {b"etc": d(), b"etc/l": ln(b"new")}
    peer = {b"etc": d(), b"etc/l": ln(b"old")}
    ops = converge(local, peer)
    assert Symlink(b"etc/l", local[b"etc/l"]) in ops


def test_file_metadata_change_is_setmeta_only() -> None:
    local = {b"etc": d(), b"etc/f": f(b"same", mode=0o600, uid=1000, mtime=9)}
    peer = {b"etc": d(), b"etc/f": f(b"same")}
    ops = converge(local, peer)
    assert ops[0] == SetMeta(b"etc/f", local[b"etc/f"])
    assert not any(isinstance(op, (PutFile, Rename, Delete)) for op in ops)


def test_xattr_change_is_setmeta_only() -> None:
    entry = f(b"same")
    with_acl = Entry(
        Kind.FILE,
        entry.mode,
        entry.uid,
        entry.gid,
        entry.mtime_ns,
        entry.size,
        entry.digest,
        xattrs=((b"system.posix_acl_access", b"\x02\x00"),),
    )
    local = {b"etc": d(), b"etc/f": with_acl}
    peer = {b"etc": d(), b"etc/f": entry}
    ops = converge(local, peer)
    assert ops[0] == SetMeta(b"etc/f", with_acl)
    assert not any(isinstance(op, PutFile) for op in ops)


def test_symlink_metadata_change_is_setmeta_only() -> None:
    local = {b"etc": d(), b"etc/l": ln(b"t", uid=1000, mtime=7)}
    peer = {b"etc": d(), b"etc/l": ln(b"t")}
    ops = converge(local, peer)
    assert ops[0] == SetMeta(b"etc/l", local[b"etc/l"])
    assert not any(isinstance(op, Symlink) for op in ops)


def test_directory_metadata_change_is_setmeta_only() -> None:
    local = {b"etc": d(mode=0o700), b"etc/a": d(mtime=3), b"etc/a/f": f(b"f")}
    peer = {b"etc": d(), b"etc/a": d(), b"etc/a/f": f(b"f")}
    ops = converge(local, peer)
    assert ops == [SetMeta(b"etc/a", local[b"etc/a"]), SetMeta(b"etc", local[b"etc"])]


def test_directory_metadata_is_set_after_its_children_change() -> None:
    local = {b"etc": d(), b"etc/a": d(), b"etc/a/f": f(b"new")}
    peer = {b"etc": d(), b"etc/a": d(), b"etc/a/f": f(b"old")}
    ops = converge(local, peer)
    assert ops == [PutFile(b"etc/a/f", local[b"etc/a/f"]), SetMeta(b"etc/a", local[b"etc/a"])]


def test_mixed_changes_converge() -> None:
    local = {
        b"etc": d(),
        b"etc/a": d(),
        b"etc/a/one": f(b"1"),
        b"etc/a/two": f(b"2"),
        b"etc/b": f(b"b"),
        b"etc/c": d(),
        b"etc/c/l": ln(b"../a"),
    }
    peer = {
        b"etc": d(mtime=4),
        b"etc/a": f(b"1"),
        b"etc/b": d(),
        b"etc/b/two": f(b"2"),
        b"etc/b/x": d(),
        b"etc/b/x/y": ln(b"y"),
        b"etc/c": ln(b"a"),
        b"etc/gone": f(b"gone"),
    }
    ops = converge(local, peer)
    assert Rename(b"etc/b/two", b"etc/a/two", local[b"etc/a/two"]) in ops
