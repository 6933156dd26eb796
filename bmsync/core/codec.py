"""The codec of the protocol's frames (sans I/O): on the wire a frame is a
4-byte big-endian length followed by that many bytes of msgpack, a map
whose ``type`` key names the frame (``frames`` declares them). Decoding
validates every field; any defect is a ``ProtocolError``."""

from __future__ import annotations

import struct
import typing

import msgspec

from bmsync.core.errors import ProtocolError
from bmsync.core.frames import MAX_FRAME_BYTES, Frame, ToAgent

_LENGTH = struct.Struct(">I")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)
_agent_decoder = msgspec.msgpack.Decoder(ToAgent)


class _Tagged(msgspec.Struct):
    """Just a frame's ``type`` (msgspec skips every other field unbuilt)."""

    type: str = ""


_NAMES = {t.__struct_config__.tag: t.__name__ for t in typing.get_args(Frame)}
_TO_AGENT = {t.__struct_config__.tag for t in typing.get_args(ToAgent)}


def encode(frame: Frame) -> bytes:
    body = _encoder.encode(frame)
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError(
            f"{type(frame).__name__} frame of {len(body)} bytes exceeds "
            f"the {MAX_FRAME_BYTES}-byte limit"
        )
    return _LENGTH.pack(len(body)) + body


def decode_body(body: bytes | memoryview, *, to_agent: bool = False) -> Frame:
    """One frame's body; ``to_agent``: only the frames an agent accepts."""
    try:
        frame: Frame = (_agent_decoder if to_agent else _decoder).decode(body)
    except (msgspec.MsgspecError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        # msgspec reports invalid UTF-8 in a str field as UnicodeDecodeError
        if to_agent:
            _refuse_not_to_agent(body)
        raise ProtocolError(f"malformed frame: {exc}") from exc
    return frame


def _refuse_not_to_agent(body: bytes | memoryview) -> None:
    """A frame of a known type that only agents send: say so."""
    try:
        tag = msgspec.msgpack.decode(body, type=_Tagged).type
    except (msgspec.MsgspecError, UnicodeDecodeError, ValueError, RecursionError):
        return
    if tag in _NAMES and tag not in _TO_AGENT:
        raise ProtocolError(f"the agent does not accept {_NAMES[tag]} frames")


class FrameDecoder:
    """Bytes in, frames out: ``feed`` what arrived, then ``next_frame``
    until it returns ``None``. Any defect raises ``ProtocolError``.
    ``to_agent``: the agent's end, which decodes only ``ToAgent`` frames.

    What it holds is bounded: the bytes of at most one frame
    (``max_frame_bytes``) plus what was fed since; a body is decoded in
    place, never copied."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES, *, to_agent: bool = False) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes
        self._to_agent = to_agent

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buffer)

    def next_frame(self) -> Frame | None:
        if len(self._buffer) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > self._max:
            raise ProtocolError(f"frame length {length} exceeds the {self._max}-byte limit")
        end = _LENGTH.size + length
        if len(self._buffer) < end:
            return None
        try:
            with memoryview(self._buffer) as view, view[_LENGTH.size : end] as body:
                return decode_body(body, to_agent=self._to_agent)
        finally:
            del self._buffer[:end]
