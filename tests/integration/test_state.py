"""The acknowledged-manifest store under state_dir: snapshot plus journal,
what survives a crash, and what does not belong to this peer."""

from __future__ import annotations

from pathlib import Path

from bmsync.core.manifest import Entry, Kind, digest_bytes, manifest_digest
from bmsync.fs.atomic import write_atomic
from bmsync.state.journal import JOURNAL_NAME, SNAPSHOT_NAME, ManifestStore


def entry(data: bytes) -> Entry:
    return Entry(Kind.FILE, 0o644, 0, 0, 1, len(data), digest_bytes(data))


DIR = Entry(Kind.DIR, 0o755, 0, 0, 1)


def test_snapshot_and_journal_round_trip(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path)
    store.replace("bm2", {b"etc": DIR, b"etc/a": entry(b"a")})
    store.record([(b"etc/b", entry(b"b")), (b"etc/a", None)])
    store.record([(b"etc/b", entry(b"b2"))])
    store.close()
    assert ManifestStore(tmp_path).load("bm2") == {b"etc": DIR, b"etc/b": entry(b"b2")}
    assert (tmp_path / SNAPSHOT_NAME).stat().st_mode & 0o777 == 0o600


def test_a_record_torn_by_a_crash_is_ignored(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path)
    store.replace("bm2", {b"etc": DIR})
    store.record([(b"etc/a", entry(b"a"))])
    store.record([(b"etc/b", entry(b"b"))])
    store.close()
    journal = tmp_path / JOURNAL_NAME
    journal.write_bytes(journal.read_bytes()[:-3])  # the last append half done
    assert ManifestStore(tmp_path).load("bm2") == {b"etc": DIR, b"etc/a": entry(b"a")}


def test_records_appended_after_a_torn_one_are_kept(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path)
    store.replace("bm2", {b"etc": DIR})
    store.record([(b"etc/a", entry(b"a"))])
    store.close()
    journal = tmp_path / JOURNAL_NAME
    journal.write_bytes(journal.read_bytes() + b"\x00\x00\x01")  # a crash mid-append
    restarted = ManifestStore(tmp_path)
    assert restarted.load("bm2") == {b"etc": DIR, b"etc/a": entry(b"a")}
    restarted.record([(b"etc/b", entry(b"b"))])  # the next acknowledged batch
    restarted.close()
    assert ManifestStore(tmp_path).load("bm2") == {
        b"etc": DIR,
        b"etc/a": entry(b"a"),
        b"etc/b": entry(b"b"),
    }


def test_the_snapshot_header_names_its_manifest_until_a_journal_follows_it(tmp_path: Path) -> None:
    manifest = {b"etc": DIR, b"etc/a": entry(b"a")}
    store = ManifestStore(tmp_path)
    assert store.stored_digest() is None
    store.replace("bm2", manifest)
    assert store.stored_digest() == ("bm2", manifest_digest(manifest))
    store.record([(b"etc/b", entry(b"b"))])  # acknowledged after the snapshot
    now = {**manifest, b"etc/b": entry(b"b")}
    assert ManifestStore(tmp_path).load("bm2") == now
    # the header no longer tells the whole story: snapshot and journal are read
    assert ManifestStore(tmp_path).stored_digest() == ("bm2", manifest_digest(now))
    store.close()


def test_replace_folds_the_journal_into_a_new_snapshot(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path)
    store.replace("bm2", {b"etc": DIR})
    store.record([(b"etc/a", entry(b"a"))])
    store.replace("bm2", {b"etc": DIR, b"etc/a": entry(b"a")})
    assert not (tmp_path / JOURNAL_NAME).exists()
    store.close()
    assert ManifestStore(tmp_path).load("bm2") == {b"etc": DIR, b"etc/a": entry(b"a")}


def test_another_peers_or_an_unreadable_manifest_is_not_used(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path)
    store.replace("bm2", {b"etc": DIR})
    store.close()
    assert ManifestStore(tmp_path).load("bm3") == {}
    (tmp_path / SNAPSHOT_NAME).write_bytes(b"\xc1 not msgpack")
    assert ManifestStore(tmp_path).load("bm2") == {}
    assert ManifestStore(tmp_path / "nowhere").load("bm2") == {}


def test_write_atomic_replaces_whole_files_only(tmp_path: Path) -> None:
    target = tmp_path / "state.bin"
    write_atomic(target, b"first")
    write_atomic(target, b"second version")
    assert target.read_bytes() == b"second version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.bin"]
