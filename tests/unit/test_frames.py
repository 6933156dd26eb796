"""Protocol frames: the codec, the incremental decoder and validation."""

from __future__ import annotations

import contextlib
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any, get_args

import msgspec
import pytest

from bmsync.core.codec import FrameDecoder, decode_body, encode
from bmsync.core.delta import DELTA_MAX_BYTES, MAX_DELTA_OPS, Copy, Literal
from bmsync.core.errors import ProtocolError
from bmsync.core.frames import (
    BASE_MISMATCH,
    HOLE_MAX_BYTES,
    MAX_FRAME_BYTES,
    Applied,
    Bye,
    Commit,
    ErrorFrame,
    Expect,
    Failure,
    Fetch,
    Frame,
    Hello,
    ManifestPart,
    ManifestRequest,
    Purpose,
    Put,
    PutAbort,
    PutChunk,
    PutDelta,
    PutHole,
    Refuse,
    ToAgent,
    Welcome,
)
from bmsync.core.ha_frames import (
    MAX_DEVICE_PATH,
    MAX_DEVICES,
    DeviceMounts,
    HaAction,
    HaAnswer,
    HaRequest,
    MountsReport,
    MountsRequest,
    NodeFacts,
)
from bmsync.core.manifest import DIGEST_SIZE, MAX_XATTRS, Entry, Kind, digest_bytes
from bmsync.core.ops import Delete, Mkdir, Rename, SetMeta, Symlink
from bmsync.core.roles import Role

FILE = Entry(
    Kind.FILE,
    0o640,
    0,
    107,
    1_700_000_000_123_456_789,
    5,
    digest_bytes(b"hello"),
    xattrs=((b"security.selinux", b"etc_t\0"), (b"user.x", b"")),
)
DIR = Entry(Kind.DIR, 0o755, 0, 0, 1_700_000_000_000_000_000)
LINK = Entry(Kind.SYMLINK, 0o777, 0, 0, -5, target=b"../\xffelsewhere")

SAMPLES: list[Any] = [
    Hello(1, "bm1", Role.ACTIVE, 42, Purpose.WRITE, "bmsync 1.0"),
    Hello(1, "bm1", Role.PASSIVE, 0, Purpose.READ, ""),
    Welcome(1, "bm2", Role.PASSIVE, 42),
    Refuse("busy: another session holds the lock", "bm2", Role.ACTIVE, 43),
    ManifestRequest(),
    ManifestPart([(b"etc", DIR), (b"etc/a", FILE), (b"etc/l", LINK)], last=False),
    ManifestPart([], last=True),
    MountsRequest(["/dev/disk/by-uuid/1234", "/dev/loop0"]),
    HaRequest(HaAction.DRAIN, operation="switchover bm1 -> bm2"),
    HaAnswer(
        ok=True,
        lines=["VIP 10.0.0.10 removed from eth0"],
        facts=NodeFacts("bm1", Role.PASSIVE, 3, False, "standby", False, False, False, []),
    ),
    HaAnswer(ok=False, error="ha.services.stop: 'bmctl stop': exit status 1", exit_code=10),
    MountsReport(
        [
            DeviceMounts("/dev/loop0", present=True, mount_points=["/var/spool/cyrus"]),
            DeviceMounts("/dev/sdz", present=False, problem="no such device"),
        ]
    ),
    PutChunk(b"etc/a", 0, b"hel"),
    PutHole(b"etc/a", 3, 1 << 20),
    Put(b"etc/a", 3, b"lo", FILE),
    Put(b"etc/empty", 0, b"", Entry(Kind.FILE, 0o600, 0, 0, 0, 0, digest_bytes(b""))),
    PutAbort(b"etc/a"),
    Fetch(b"etc/a"),
    PutDelta(b"etc/a", digest_bytes(b"hello"), [Copy(0, 3), Literal(b"p!")], FILE),
    Expect(b"etc/a", digest_bytes(b"hello")),
    Applied(9, [(b"etc/a", None)], [Failure(b"etc/a", "not the base", BASE_MISMATCH)]),
    Mkdir(b"etc/d", DIR),
    Symlink(b"etc/l", LINK),
    Rename(b"etc/old", b"etc/new dir/\xfe", FILE),
    Delete(b"etc/gone", Kind.FILE),
    Delete(b"etc/gone-dir", Kind.DIR),
    SetMeta(b"etc", DIR),
    Commit(7),
    Applied(7, [(b"etc/a", FILE), (b"etc/gone", None)], [Failure(b"etc/x", "EACCES")]),
    Applied(8, [], []),
    ErrorFrame("malformed frame: something"),
    Bye(),
]


def test_samples_cover_every_frame_type() -> None:
    assert {type(s) for s in SAMPLES} == set(get_args(Frame))


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: type(f).__name__)
def test_round_trip(frame: Any) -> None:
    data = encode(frame)
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    decoded = decode_body(data[4:])
    assert decoded == frame
    assert type(decoded) is type(frame)


def test_round_trip_through_the_decoder_in_one_piece() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode(f) for f in SAMPLES))
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    assert out == SAMPLES
    assert decoder.pending == 0


def test_decoder_fed_one_byte_at_a_time() -> None:
    stream = b"".join(encode(f) for f in SAMPLES)
    decoder = FrameDecoder()
    out = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    assert out == SAMPLES
    assert decoder.pending == 0


def test_decoder_waits_for_a_whole_frame() -> None:
    data = encode(Commit(1))
    decoder = FrameDecoder()
    assert decoder.next_frame() is None
    decoder.feed(data[:3])
    assert decoder.next_frame() is None
    decoder.feed(data[3:-1])
    assert decoder.next_frame() is None
    assert decoder.pending == len(data) - 1
    decoder.feed(data[-1:] + data[:2])
    assert decoder.next_frame() == Commit(1)
    assert decoder.pending == 2
    assert decoder.next_frame() is None


def test_length_above_the_limit_is_refused_before_the_body() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", MAX_FRAME_BYTES + 1))
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.next_frame()


def test_length_at_the_limit_waits_for_the_body() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", MAX_FRAME_BYTES))
    assert decoder.next_frame() is None


def test_huge_length_is_refused() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\xff\xff\xff\xff")
    with pytest.raises(ProtocolError):
        decoder.next_frame()


def test_custom_limit() -> None:
    decoder = FrameDecoder(max_frame_bytes=32)
    decoder.feed(encode(Commit(1)))
    assert decoder.next_frame() == Commit(1)
    decoder.feed(encode(ErrorFrame("x" * 100)))
    with pytest.raises(ProtocolError):
        decoder.next_frame()


def test_encode_refuses_a_frame_above_the_limit() -> None:
    data = b"\0" * (MAX_FRAME_BYTES + 1)
    with pytest.raises(ProtocolError, match="Put frame"):
        encode(Put(b"etc/big", 0, data, FILE))
    with pytest.raises(ProtocolError, match="PutChunk frame"):
        encode(PutChunk(b"etc/big", 0, data))


def test_encode_accepts_a_chunk_well_below_the_limit() -> None:
    data = b"\1" * (MAX_FRAME_BYTES - 1024)
    frame = Put(b"etc/big", 0, data, FILE)
    assert decode_body(encode(frame)[4:]) == frame


# --- hostile or broken input ---------------------------------------------------


def raw(frame: Any) -> dict[str, Any]:
    """A good frame as the plain msgpack map it travels as."""
    body = msgspec.msgpack.decode(encode(frame)[4:])
    assert isinstance(body, dict)
    return body


def body_of(fields: dict[str, Any]) -> bytes:
    return msgspec.msgpack.encode(fields)


def test_wire_shape() -> None:
    body = raw(Mkdir(b"etc/d", DIR))
    assert body == {
        "type": "mkdir",
        "path": b"etc/d",
        "entry": [2, 0o755, 0, 0, DIR.mtime_ns, 0, b"", b"", []],
    }
    assert raw(Delete(b"etc/x", Kind.DIR)) == {"type": "delete", "path": b"etc/x", "kind": 2}


BAD_PATHS = [b"../x", b"etc/../x", b"/etc/x", b"etc\0x", b"", b"etc//x", b"etc/"]

PATH_FRAMES: list[tuple[Any, str]] = [
    (Mkdir(b"etc/d", DIR), "path"),
    (Symlink(b"etc/l", LINK), "path"),
    (SetMeta(b"etc", DIR), "path"),
    (Delete(b"etc/x", Kind.FILE), "path"),
    (Rename(b"etc/a", b"etc/b", FILE), "src"),
    (Rename(b"etc/a", b"etc/b", FILE), "dst"),
    (PutChunk(b"etc/a", 0, b"x"), "path"),
    (PutHole(b"etc/a", 0, 1), "path"),
    (Put(b"etc/a", 0, b"hello", FILE), "path"),
]


@pytest.mark.parametrize(("offset", "length"), [(-1, 1), (0, 0), (0, -5), (0, HOLE_MAX_BYTES + 1)])
def test_a_hole_out_of_bounds_is_refused_on_decode(offset: int, length: int) -> None:
    fields = raw(PutHole(b"etc/a", 0, 1))
    fields["offset"], fields["length"] = offset, length
    with pytest.raises(ProtocolError):
        decode_body(body_of(fields))


@pytest.mark.parametrize("bad", BAD_PATHS)
@pytest.mark.parametrize(
    ("frame", "field"), PATH_FRAMES, ids=lambda x: x if isinstance(x, str) else type(x).__name__
)
def test_bad_path_is_refused_on_decode(frame: Any, field: str, bad: bytes) -> None:
    fields = raw(frame)
    fields[field] = bad
    with pytest.raises(ProtocolError):
        decode_body(body_of(fields))
    decoder = FrameDecoder()
    body = body_of(fields)
    decoder.feed(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError):
        decoder.next_frame()


@pytest.mark.parametrize("bad", BAD_PATHS)
def test_bad_path_in_a_manifest_part_is_refused(bad: bytes) -> None:
    fields = raw(ManifestPart([(b"etc", DIR), (b"etc/a", FILE)], last=True))
    fields["entries"][1][0] = bad
    with pytest.raises(ProtocolError):
        decode_body(body_of(fields))


@pytest.mark.parametrize("bad", [b"../x", b"/etc/x", b"etc\0x"])
def test_bad_path_in_applied_results_is_refused(bad: bytes) -> None:
    fields = raw(Applied(1, [(b"etc/a", None)], []))
    fields["results"][0][0] = bad
    with pytest.raises(ProtocolError):
        decode_body(body_of(fields))


@pytest.mark.parametrize("bad", [b"../x", b"/etc/x", b"etc\0x"])
def test_bad_path_in_applied_failures_is_refused(bad: bytes) -> None:
    fields = raw(Applied(1, [], [Failure(b"etc/b", "EIO")]))
    fields["failures"][0][0] = bad
    with pytest.raises(ProtocolError):
        decode_body(body_of(fields))


ENTRY_DEFECTS: list[tuple[str, int, Any]] = [
    ("mode too big", 1, 0o10000),
    ("negative mode", 1, -1),
    ("negative uid", 2, -1),
    ("uid too big", 2, 2**32),
    ("gid too big", 3, 2**32),
    ("negative size", 5, -1),
    ("short digest", 6, b"\0" * (DIGEST_SIZE - 1)),
    ("long digest", 6, b"\0" * (DIGEST_SIZE + 1)),
    ("no digest", 6, b""),
    ("target on a file", 7, b"x"),
    ("empty xattr name", 8, [[b"", b"v"]]),
    ("xattr name with NUL", 8, [[b"user.\0x", b"v"]]),
    ("unknown kind", 0, 4),
    ("kind zero", 0, 0),
    ("mode as a string", 1, "0644"),
    ("digest as a string", 6, "0" * DIGEST_SIZE),
]


@pytest.mark.parametrize(
    ("what", "position", "value"), ENTRY_DEFECTS, ids=[d[0] for d in ENTRY_DEFECTS]
)
def test_bad_file_entry_is_refused(what: str, position: int, value: Any) -> None:
    fields = raw(Put(b"etc/a", 0, b"hello", FILE))
    fields["entry"][position] = value
    with pytest.raises(ProtocolError):
        decode_body(body_of(fields))


def test_symlink_without_target_is_refused() -> None:
    fields = raw(Symlink(b"etc/l", LINK))
    fields["entry"][7] = b""
    with pytest.raises(ProtocolError, match="symlink target"):
        decode_body(body_of(fields))


def test_symlink_target_with_nul_is_refused() -> None:
    fields = raw(Symlink(b"etc/l", LINK))
    fields["entry"][7] = b"a\0b"
    with pytest.raises(ProtocolError):
        decode_body(body_of(fields))


def test_directory_with_a_digest_is_refused() -> None:
    fields = raw(Mkdir(b"etc/d", DIR))
    fields["entry"][6] = b"\0" * DIGEST_SIZE
    with pytest.raises(ProtocolError, match="digest"):
        decode_body(body_of(fields))


def test_entry_with_too_few_fields_is_refused() -> None:
    fields = raw(Mkdir(b"etc/d", DIR))
    fields["entry"] = fields["entry"][:4]
    with pytest.raises(ProtocolError):
        decode_body(body_of(fields))


def test_entry_with_only_required_fields_is_accepted() -> None:
    fields = raw(Mkdir(b"etc/d", DIR))
    fields["entry"] = fields["entry"][:5]
    assert decode_body(body_of(fields)) == Mkdir(b"etc/d", DIR)


def test_bad_entry_in_a_manifest_part_is_refused() -> None:
    fields = raw(ManifestPart([(b"etc", DIR)], last=True))
    fields["entries"][0][1][1] = 0o10000
    with pytest.raises(ProtocolError):
        decode_body(body_of(fields))


def test_bad_entry_in_applied_is_refused() -> None:
    fields = raw(Applied(1, [(b"etc/a", FILE)], []))
    fields["results"][0][1][6] = b"short"
    with pytest.raises(ProtocolError):
        decode_body(body_of(fields))


@pytest.mark.parametrize("frame", [PutChunk(b"etc/a", 0, b"x"), Put(b"etc/a", 0, b"", FILE)])
def test_negative_offset_is_refused(frame: Any) -> None:
    fields = raw(frame)
    fields["offset"] = -1
    with pytest.raises(ProtocolError, match="negative offset"):
        decode_body(body_of(fields))


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "nonsense"},
        {"type": "putfile", "path": b"etc/a", "entry": [1, 0, 0, 0, 0]},
        {"path": b"etc/a"},
        {"type": "commit"},
        {"type": "commit", "batch": "one"},
        {
            "type": "hello",
            "version": 1,
            "node": "a",
            "role": "boss",
            "epoch": 0,
            "purpose": "write",
            "software": "",
        },
        {"type": "delete", "path": b"etc/a", "kind": 9},
        {"type": 1},
    ],
)
def test_malformed_frames_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError, match="malformed frame"):
        decode_body(body_of(fields))


@pytest.mark.parametrize(
    "body", [b"", b"\xc1", b"\x81", b"\x92\x01", b"not msgpack at all", b"\x90", b"\x01"]
)
def test_garbage_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_body(body)


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (ErrorFrame("x"), "message"),
        (Hello(1, "x", Role.ACTIVE, 0, Purpose.WRITE, ""), "node"),
        (Refuse("x", "bm2", Role.PASSIVE, 0), "reason"),
    ],
    ids=["ErrorFrame.message", "Hello.node", "Refuse.reason"],
)
def test_invalid_utf8_in_a_string_is_a_protocol_error(frame: Any, field: str) -> None:
    fields = raw(frame)
    body = body_of(fields).replace(b"\xa1x", b"\xa1\x80")
    assert body != body_of(fields)
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError):
        decoder.next_frame()


def test_a_manifest_request_expecting_a_short_digest_is_refused() -> None:
    fields = raw(ManifestRequest(expect=b"\0" * DIGEST_SIZE))
    fields["expect"] = b"\0" * 3
    with pytest.raises(ProtocolError, match="not a digest"):
        decode_body(body_of(fields))


def test_an_unchanged_manifest_carrying_entries_is_refused() -> None:
    fields = raw(ManifestPart([(b"etc/a", FILE)], last=True))
    fields["unchanged"] = True
    with pytest.raises(ProtocolError, match="unchanged manifest"):
        decode_body(body_of(fields))


def test_an_expected_digest_of_the_wrong_size_is_refused() -> None:
    fields = raw(Expect(b"etc/a", b""))
    fields["digest"] = b"\0" * 5
    with pytest.raises(ProtocolError, match="expected digest of 5 bytes"):
        decode_body(body_of(fields))


# -- deltas: bounded when decoded, before anything is built ------------------


def delta_body(count_header: bytes, ops: bytes, size: int = 10) -> bytes:
    """A PutDelta body whose ops array has the given msgpack header."""
    entry = msgspec.msgpack.encode(Entry(Kind.FILE, 0o644, 0, 0, 0, size, b"d" * DIGEST_SIZE))
    return (
        b"\x85\xa4type\xa5delta\xa4path\xc4\x03etc\xa4base\xc4\x10"
        + b"b" * DIGEST_SIZE
        + b"\xa3ops"
        + count_header
        + ops
        + b"\xa5entry"
        + entry
    )


def test_a_delta_of_more_operations_than_allowed_is_refused_unbuilt() -> None:
    copy = msgspec.msgpack.encode(Copy(0, 1000))
    ok = decode_body(delta_body(b"\xdd" + struct.pack(">I", 3), copy * 3))
    assert isinstance(ok, PutDelta) and ok.ops == [Copy(0, 1000)] * 3
    # the array header says 4 billion: refused at once, nothing allocated
    with pytest.raises(ProtocolError, match=f"length <= {MAX_DELTA_OPS}"):
        decode_body(delta_body(b"\xdd\xff\xff\xff\xff", copy * 3))
    too_many = b"\xdd" + struct.pack(">I", MAX_DELTA_OPS + 1)
    with pytest.raises(ProtocolError, match=f"length <= {MAX_DELTA_OPS}"):
        decode_body(delta_body(too_many, copy * (MAX_DELTA_OPS + 1)))
    with pytest.raises(ProtocolError, match=f"more than the {MAX_DELTA_OPS} allowed"):
        PutDelta(b"etc/x", b"b" * DIGEST_SIZE, [Copy(0, 1)] * (MAX_DELTA_OPS + 1), FILE)


def test_a_delta_declaring_a_result_past_the_delta_limit_is_refused() -> None:
    body = delta_body(b"\x91", msgspec.msgpack.encode(Copy(0, 1)), size=DELTA_MAX_BYTES + 1)
    with pytest.raises(ProtocolError, match=f"more than the {DELTA_MAX_BYTES} bytes a delta"):
        decode_body(body)
    assert isinstance(decode_body(delta_body(b"\x90", b"", size=DELTA_MAX_BYTES)), PutDelta)


# -- what decoding a hostile frame can build is bounded ----------------------


def traced_peak(run: Callable[[], object]) -> int:
    """Bytes allocated at the peak of ``run`` beyond what was before."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with contextlib.suppress(ProtocolError):
            run()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_an_agents_decoder_never_builds_a_frame_only_agents_send() -> None:
    entries = [[b"a", [2, 0, 0, 0, 0]]] * 800_000  # 8 MB: 170 MB of objects
    bomb = msgspec.msgpack.encode({"type": "manifest", "entries": entries, "last": True})
    decoder = FrameDecoder(to_agent=True)
    decoder.feed(struct.pack(">I", len(bomb)) + bomb)
    with pytest.raises(ProtocolError, match="the agent does not accept ManifestPart frames"):
        decoder.next_frame()
    assert traced_peak(lambda: decode_body(bomb, to_agent=True)) < 1024 * 1024
    for frame in SAMPLES:
        if isinstance(frame, get_args(ToAgent)):
            assert decode_body(encode(frame)[4:], to_agent=True) == frame
        else:
            with pytest.raises(ProtocolError, match="the agent does not accept"):
                decode_body(encode(frame)[4:], to_agent=True)
    with pytest.raises(ProtocolError, match="malformed frame"):
        decode_body(b"\x81\xa4type\xaaformat-all", to_agent=True)


def test_more_xattrs_than_linux_allows_are_refused_unbuilt() -> None:
    def setmeta(count_header: bytes, pairs: int) -> bytes:
        entry = b"\x99\x02\xcd\x01\xed\x00\x00\x00\x00\xc4\x00\xc4\x00" + count_header
        body = b"\x83\xa4type\xa7setmeta\xa4path\xc4\x03etc\xa5entry" + entry
        return body + b"\x92\xc4\x01u\xc4\x00" * pairs

    ok = decode_body(setmeta(b"\xdd" + struct.pack(">I", MAX_XATTRS), MAX_XATTRS))
    assert isinstance(ok, SetMeta) and len(ok.entry.xattrs) == MAX_XATTRS
    over = setmeta(b"\xdd" + struct.pack(">I", 1_398_000), 1_398_000)  # an 8 MiB frame
    peak = traced_peak(lambda: decode_body(over))
    with pytest.raises(ProtocolError, match=f"length <= {MAX_XATTRS}"):
        decode_body(over)
    assert peak < 1024 * 1024  # not the 120 MiB of tuples it would make


def test_a_frame_is_decoded_in_place_not_copied() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode(PutChunk(b"etc/big", 0, b"x" * 8_000_000)))
    peak = traced_peak(decoder.next_frame)
    assert 8_000_000 <= peak < 8_500_000  # the chunk's data, once


# -- ha storage: which devices the peer has mounted --------------------------


@pytest.mark.parametrize("bad", ["dev/sdb", "", "/dev/sd\0b", "/" + "d" * MAX_DEVICE_PATH])
def test_a_mounts_request_for_a_device_not_an_absolute_path_is_refused(bad: str) -> None:
    fields = raw(MountsRequest(["/dev/sdb"]))
    fields["devices"] = ["/dev/sda", bad]
    with pytest.raises(ProtocolError, match="not an absolute device path"):
        decode_body(body_of(fields))
    with pytest.raises(ProtocolError, match="not an absolute device path"):
        decode_body(body_of(fields), to_agent=True)


@pytest.mark.parametrize("bad", ["dev/sdb", "/dev/sd\0b"])
def test_a_mounts_report_on_a_device_not_an_absolute_path_is_refused(bad: str) -> None:
    fields = raw(MountsReport([DeviceMounts("/dev/sdb", present=False)]))
    fields["devices"][0]["device"] = bad
    with pytest.raises(ProtocolError, match="not an absolute device path"):
        decode_body(body_of(fields))


def test_more_devices_than_allowed_are_refused() -> None:
    many = [f"/dev/sd{i}" for i in range(MAX_DEVICES + 1)]
    fields = raw(MountsRequest(["/dev/sda"]))
    fields["devices"] = many
    with pytest.raises(ProtocolError, match=f"at most {MAX_DEVICES}"):
        decode_body(body_of(fields))
    assert decode_body(encode(MountsRequest(many[:MAX_DEVICES]))[4:]) == MountsRequest(
        many[:MAX_DEVICES]
    )
    fields = raw(MountsReport([]))
    fields["devices"] = [raw_device(path) for path in many]
    with pytest.raises(ProtocolError, match=f"at most {MAX_DEVICES}"):
        decode_body(body_of(fields))


def raw_device(path: str) -> dict[str, Any]:
    return {"device": path, "present": True, "mount_points": [], "problem": ""}


def test_a_device_on_too_many_mount_points_is_refused() -> None:
    fields = raw(MountsReport([DeviceMounts("/dev/sdb", present=True)]))
    fields["devices"][0]["mount_points"] = [f"/mnt/{i}" for i in range(4 * MAX_DEVICES + 1)]
    with pytest.raises(ProtocolError, match="mount points reported"):
        decode_body(body_of(fields))


def test_mounts_frames_round_trip_with_unusual_names() -> None:
    request = MountsRequest(["/dev/disk/by-label/my disk", "/dev/mapper/vg-caf\u00e9"])
    report = MountsReport(
        [
            DeviceMounts(
                "/dev/disk/by-label/my disk",
                present=True,
                mount_points=["/var/spool/cyrus", "/srv/a b\tc"],
            ),
            DeviceMounts("/dev/mapper/vg-caf\u00e9", present=False, problem="not a block device"),
        ]
    )
    for frame in (request, report, MountsRequest([]), MountsReport([])):
        decoded = decode_body(encode(frame)[4:])
        assert decoded == frame
        assert type(decoded) is type(frame)
    assert decode_body(encode(request)[4:], to_agent=True) == request
    with pytest.raises(ProtocolError, match="the agent does not accept MountsReport"):
        decode_body(encode(report)[4:], to_agent=True)


def test_a_device_missing_from_a_report_entry_is_malformed() -> None:
    fields = raw(MountsReport([DeviceMounts("/dev/sdb", present=True)]))
    del fields["devices"][0]["present"]
    with pytest.raises(ProtocolError, match="malformed frame"):
        decode_body(body_of(fields))
