"""Property tests of the frame codec: round trips, and no crash on any input."""

from __future__ import annotations

import struct
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bmsync.core.codec import FrameDecoder, decode_body, encode
from bmsync.core.errors import ProtocolError
from bmsync.core.frames import (
    Applied,
    Bye,
    Commit,
    ErrorFrame,
    Failure,
    Frame,
    Hello,
    ManifestPart,
    ManifestRequest,
    Purpose,
    Put,
    PutChunk,
    Refuse,
    Welcome,
)
from bmsync.core.manifest import DIGEST_SIZE, Entry, Kind
from bmsync.core.ops import Delete, Mkdir, Rename, SetMeta, Symlink
from bmsync.core.roles import MAX_EPOCH, Role

FRAME_TYPES: tuple[type, ...] = get_args(Frame)

BAD_UTF8_BODY = b"\x82\xa4type\xa5error\xa7message\xa1\x80"
TAGS: list[str] = [t.__struct_config__.tag for t in FRAME_TYPES]
FIELD_NAMES: list[str] = sorted({name for t in FRAME_TYPES for name in t.__struct_fields__})

int64 = st.integers(-(2**63), 2**63 - 1)
epochs = st.integers(0, MAX_EPOCH)
# what msgpack can carry but no epoch may be
bad_epochs = st.integers(-(2**63), -1) | st.integers(MAX_EPOCH + 1, 2**64 - 1)
uint32 = st.integers(0, 2**32 - 1)
text = st.text(st.characters(codec="utf-8"), max_size=30)

component = st.binary(min_size=1, max_size=12).filter(
    lambda c: b"/" not in c and b"\0" not in c and c not in (b".", b"..")
)
paths = st.lists(component, min_size=1, max_size=4).map(b"/".join)

xattr_names = st.binary(min_size=1, max_size=12).filter(lambda n: b"\0" not in n)
xattrs = st.dictionaries(xattr_names, st.binary(max_size=12), max_size=3).map(
    lambda d: tuple(sorted(d.items()))
)


def entries_of(kind: Kind) -> st.SearchStrategy[Entry]:
    return st.builds(
        Entry,
        kind=st.just(kind),
        mode=st.integers(0, 0o7777),
        uid=uint32,
        gid=uint32,
        mtime_ns=int64,
        size=st.integers(0, 2**63 - 1) if kind == Kind.FILE else st.just(0),
        digest=st.binary(min_size=DIGEST_SIZE, max_size=DIGEST_SIZE)
        if kind == Kind.FILE
        else st.just(b""),
        target=st.binary(min_size=1, max_size=20).filter(lambda t: b"\0" not in t)
        if kind == Kind.SYMLINK
        else st.just(b""),
        xattrs=st.just(()) if kind == Kind.SYMLINK else xattrs,
    )


entries = st.one_of(entries_of(Kind.FILE), entries_of(Kind.DIR), entries_of(Kind.SYMLINK))

handshake_frames: st.SearchStrategy[Any] = st.one_of(
    st.builds(
        Hello,
        version=int64,
        node=text,
        role=st.sampled_from(Role),
        epoch=epochs,
        purpose=st.sampled_from(Purpose),
        software=text,
    ),
    st.builds(
        Welcome,
        version=int64,
        node=text,
        role=st.sampled_from(Role),
        epoch=epochs,
        seen_epoch=epochs,
        seen_node=text,
    ),
    st.builds(
        Refuse,
        reason=text,
        node=text,
        role=st.sampled_from(Role),
        epoch=epochs,
        seen_epoch=epochs,
        seen_node=text,
    ),
)
frames: st.SearchStrategy[Any] = st.one_of(
    handshake_frames,
    st.just(ManifestRequest()),
    st.builds(
        ManifestPart,
        entries=st.lists(st.tuples(paths, entries), max_size=5),
        last=st.booleans(),
    ),
    st.builds(PutChunk, path=paths, offset=st.integers(0, 2**63 - 1), data=st.binary(max_size=64)),
    st.builds(
        Put,
        path=paths,
        offset=st.integers(0, 2**63 - 1),
        data=st.binary(max_size=64),
        entry=entries_of(Kind.FILE),
    ),
    st.builds(Mkdir, path=paths, entry=entries_of(Kind.DIR)),
    st.builds(Symlink, path=paths, entry=entries_of(Kind.SYMLINK)),
    st.builds(Rename, src=paths, dst=paths, entry=entries_of(Kind.FILE)),
    st.builds(Delete, path=paths, kind=st.sampled_from(Kind)),
    st.builds(SetMeta, path=paths, entry=entries),
    st.builds(Commit, batch=int64),
    st.builds(
        Applied,
        batch=int64,
        results=st.lists(st.tuples(paths, st.none() | entries), max_size=5),
        failures=st.lists(st.builds(Failure, path=paths, reason=text), max_size=3),
    ),
    st.builds(ErrorFrame, message=text),
    st.just(Bye()),
)


@settings(max_examples=300, deadline=None)
@given(frames)
def test_round_trip(frame: Any) -> None:
    data = encode(frame)
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    decoded = decode_body(data[4:])
    assert decoded == frame
    assert type(decoded) is type(frame)


@settings(max_examples=100, deadline=None)
@given(st.lists(frames, max_size=6), st.data())
def test_stream_split_anywhere_decodes_the_same(frame_list: list[Any], data: st.DataObject) -> None:
    stream = b"".join(encode(f) for f in frame_list)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder()
    out = []
    start = 0
    for cut in [*cuts, len(stream)]:
        decoder.feed(stream[start:cut])
        start = cut
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    assert out == frame_list
    assert decoder.pending == 0


def drain(
    data: bytes,
    max_frame_bytes: int | None = None,
) -> None:
    """Feed ``data``; only frames, ``None`` or ProtocolError may come out."""
    decoder = FrameDecoder() if max_frame_bytes is None else FrameDecoder(max_frame_bytes)
    decoder.feed(data)
    try:
        for _ in range(len(data) + 1):
            frame = decoder.next_frame()
            if frame is None:
                return
            assert isinstance(frame, FRAME_TYPES)
    except ProtocolError:
        return


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    drain(data)
    drain(data, max_frame_bytes=64)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=4))
def test_random_bodies_with_a_valid_length_never_crash(bodies: list[bytes]) -> None:
    drain(b"".join(framed(b) for b in bodies))
    for body in bodies:
        try:
            frame = decode_body(body)
        except ProtocolError:
            continue
        assert isinstance(frame, FRAME_TYPES)


leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    text,
    st.binary(max_size=20),
    paths,
    st.sampled_from([b"../x", b"/abs", b"a\0b", b"", b"a//b"]),
    st.sampled_from([0, 1, 2, 3, 4, -1, 0o7777, 0o10000, 2**32]),
    st.sampled_from(["active", "passive", "write", "read", "boss"]),
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=9) | st.dictionaries(text, inner, max_size=3),
    max_leaves=20,
)
entry_like = st.lists(leaves, min_size=0, max_size=10) | entries.map(
    lambda e: list(msgspec.to_builtins(e))
)
field_values = st.one_of(values, entry_like, st.lists(st.tuples(paths, entry_like), max_size=3))
random_frames = st.builds(
    lambda tag, fields: {**fields, "type": tag},
    st.sampled_from(TAGS) | text,
    st.dictionaries(st.sampled_from(FIELD_NAMES) | text, field_values, max_size=6),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(random_frames)
def test_random_maps_with_a_real_tag_never_crash(fields: dict[str, Any]) -> None:
    body = msgspec.msgpack.encode(fields)
    try:
        frame = decode_body(body)
    except ProtocolError:
        pass
    else:
        assert isinstance(frame, FRAME_TYPES)
        assert frame == decode_body(encode(frame)[4:])
    drain(framed(body))


@settings(max_examples=200, deadline=None)
@given(frames, st.data())
def test_mutated_good_frames_never_crash(frame: Any, data: st.DataObject) -> None:
    fields = msgspec.msgpack.decode(encode(frame)[4:])
    key = data.draw(st.sampled_from(sorted(fields)))
    fields[key] = data.draw(field_values)
    body = msgspec.msgpack.encode(fields)
    try:
        decoded = decode_body(body)
    except ProtocolError:
        return
    assert isinstance(decoded, FRAME_TYPES)


@settings(max_examples=200, deadline=None)
@given(frames, st.data())
def test_corrupted_encodings_never_crash(frame: Any, data: st.DataObject) -> None:
    body = bytearray(encode(frame)[4:])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    drain(framed(bytes(body[:cut])))
    drain(framed(bytes(body)))


@settings(max_examples=100, deadline=None)
@example(BAD_UTF8_BODY)
@given(st.binary(max_size=80))
def test_any_body_gives_a_frame_or_protocol_error(body: bytes) -> None:
    drain(framed(body))


EPOCH_FIELDS = [
    (Hello, "epoch"),
    (Welcome, "epoch"),
    (Welcome, "seen_epoch"),
    (Refuse, "epoch"),
    (Refuse, "seen_epoch"),
]


@settings(max_examples=300, deadline=None)
@given(handshake_frames, st.data())
def test_any_epoch_out_of_range_is_a_protocol_error(frame: Any, data: st.DataObject) -> None:
    """An epoch a hostile sender picks past MAX_EPOCH (or below 0) never
    becomes a frame, so it is never judged nor recorded."""
    fields = msgspec.msgpack.decode(encode(frame)[4:])
    name = data.draw(st.sampled_from([n for t, n in EPOCH_FIELDS if t is type(frame)]))
    fields[name] = epoch = data.draw(bad_epochs)
    try:
        decode_body(msgspec.msgpack.encode(fields))
    except ProtocolError as exc:
        assert f"epoch {epoch} is out of range (0 to {MAX_EPOCH})" in str(exc)
    else:
        raise AssertionError(f"{type(frame).__name__}.{name} = {epoch} was decoded")


@pytest.mark.parametrize(("frame_type", "name"), EPOCH_FIELDS)
def test_the_highest_epoch_itself_decodes(frame_type: type, name: str) -> None:
    fields = {
        Hello: {"version": 1, "node": "a", "role": "active", "purpose": "write", "software": ""},
        Welcome: {"version": 1, "node": "a", "role": "passive"},
        Refuse: {"reason": "r", "node": "a", "role": "passive"},
    }[frame_type]
    body = {"type": frame_type.__struct_config__.tag, "epoch": 0, **fields, name: MAX_EPOCH}
    frame = decode_body(msgspec.msgpack.encode(body))
    assert getattr(frame, name) == MAX_EPOCH
