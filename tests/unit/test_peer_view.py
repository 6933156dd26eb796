"""The peer view: the one owner of what the passive node has acknowledged.
A reconcile works on the manifest the agent confirms or sends and the view
adopts it at the end, or keeps what it knew if the reconcile is cut short;
a batch's results go to memory and to the journal."""

from __future__ import annotations

from pathlib import Path

from bmsync.core.manifest import Entry, Kind, digest_bytes, manifest_digest
from bmsync.sender.peer_view import Expected, PeerView
from bmsync.state.journal import ManifestStore


def file(content: bytes, mtime: int = 1) -> Entry:
    return Entry(Kind.FILE, 0o644, 0, 0, mtime, len(content), digest_bytes(content))


ROOT = Entry(Kind.DIR, 0o755, 0, 0, 1)


def manifest(**files: bytes) -> dict[bytes, Entry]:
    return {b"": ROOT, **{name.encode(): file(content) for name, content in files.items()}}


def known(view: PeerView, entries: dict[bytes, Entry]) -> None:
    """``view`` after a reconcile that found ``entries``."""
    view.begin("bm2", dict(entries), None, {})
    view.adopt()


def test_a_first_reconcile_plans_against_the_agents_manifest_and_expects_nothing(
    tmp_path: Path,
) -> None:
    view = PeerView(tmp_path, None, None)
    fetched = manifest(a=b"a")
    view.begin("bm2", fetched, None, {})
    assert view.manifest is fetched
    assert view.expectations() is None  # nothing known: the agent checks nothing
    view.record({b"b": file(b"b")})
    view.adopt()
    assert dict(view.tree) == manifest(a=b"a", b=b"b")
    check = view.expectations()
    assert check is not None and check(b"b") == file(b"b").digest and check(b"zz") == b""


def test_a_manifest_that_differs_is_planned_against_while_the_agent_checks_the_record(
    tmp_path: Path,
) -> None:
    view = PeerView(tmp_path, None, None)
    known(view, manifest(a=b"written by bmsync"))
    record = view.tree.digest()
    fetched = manifest(a=b"changed on the passive")
    view.begin("bm2", fetched, Expected(record, view.tree.as_dict), {})
    assert view.manifest is fetched
    check = view.expectations()
    assert check is not None and check(b"a") == file(b"written by bmsync").digest
    view.record({b"a": file(b"new")})
    check = view.expectations()
    assert check is not None and check(b"a") == file(b"new").digest  # both views move on
    assert not view.unchanged
    view.adopt()
    assert view.tree[b"a"] == file(b"new")


def test_a_confirmed_manifest_that_is_the_scan_is_not_copied_or_rewritten(
    tmp_path: Path,
) -> None:
    store = ManifestStore(tmp_path)
    view = PeerView(tmp_path, store, None)
    entries = manifest(a=b"a")
    known(view, entries)
    tree = view.tree
    scanned = dict(entries)
    view.begin("bm2", None, Expected(manifest_digest(entries), view.tree.as_dict), scanned)
    assert view.manifest is scanned and view.unchanged
    view.adopt()
    assert view.tree is tree  # kept: the same entries
    assert store.stored_digest() == ("bm2", manifest_digest(entries))  # from the first adopt


def test_a_reconcile_cut_short_leaves_what_was_known(tmp_path: Path) -> None:
    view = PeerView(tmp_path, None, None)
    known(view, manifest(a=b"a"))
    view.begin("bm2", manifest(a=b"other"), Expected(view.tree.digest(), view.tree.as_dict), {})
    view.record({b"b": file(b"b")})
    view.abandon()
    assert dict(view.tree) == manifest(a=b"a")  # the next reconcile compares again


def test_a_batch_is_journaled_and_found_again_after_a_restart(tmp_path: Path) -> None:
    view = PeerView(tmp_path, ManifestStore(tmp_path), None)
    known(view, manifest(a=b"a"))
    view.record({b"b": file(b"b"), b"a": None})
    assert dict(view.tree) == manifest(b=b"b")
    assert ManifestStore(tmp_path).load("bm2") == manifest(b=b"b")
    view.close()  # a clean stop folds the journal into the snapshot
    assert ManifestStore(tmp_path).stored_digest() == ("bm2", manifest_digest(manifest(b=b"b")))
