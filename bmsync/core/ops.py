"""Operations that turn the peer's tree into the local one.

The planner produces them; all but ``PutFile`` travel as frames unchanged.
``PutFile`` names a local file whose content the sender reads and streams as
``Put`` frames at send time.
"""

from __future__ import annotations

import msgspec

from bmsync.core.manifest import Entry, Kind, check_entry
from bmsync.core.paths import check_relpath, show


class Mkdir(msgspec.Struct, frozen=True, tag="mkdir"):
    path: bytes
    entry: Entry

    def __post_init__(self) -> None:
        check_relpath(self.path)
        check_entry(self.entry)


class PutFile(msgspec.Struct, frozen=True, tag="putfile"):
    path: bytes
    entry: Entry

    def __post_init__(self) -> None:
        check_relpath(self.path)
        check_entry(self.entry)


class Symlink(msgspec.Struct, frozen=True, tag="symlink"):
    path: bytes
    entry: Entry

    def __post_init__(self) -> None:
        check_relpath(self.path)
        check_entry(self.entry)


class Rename(msgspec.Struct, frozen=True, tag="rename"):
    """Move the peer's ``src`` (whose content is ``entry.digest``) to ``dst``
    and give it ``entry``'s metadata."""

    src: bytes
    dst: bytes
    entry: Entry

    def __post_init__(self) -> None:
        check_relpath(self.src)
        check_relpath(self.dst)
        check_entry(self.entry)


class Delete(msgspec.Struct, frozen=True, tag="delete"):
    path: bytes
    kind: Kind

    def __post_init__(self) -> None:
        check_relpath(self.path)


class SetMeta(msgspec.Struct, frozen=True, tag="setmeta"):
    path: bytes
    entry: Entry

    def __post_init__(self) -> None:
        check_relpath(self.path)
        check_entry(self.entry)


Op = Mkdir | PutFile | Symlink | Rename | Delete | SetMeta


def op_paths(op: Op) -> tuple[bytes, ...]:
    if isinstance(op, Rename):
        return (op.src, op.dst)
    return (op.path,)


def describe(op: Op) -> str:
    """One line for ``--dry-run`` and logs."""
    match op:
        case Mkdir():
            return f"mkdir   {show(op.path)}"
        case PutFile():
            return f"send    {show(op.path)} ({op.entry.size} bytes)"
        case Symlink():
            return f"link    {show(op.path)} -> {show(op.entry.target)[1:]}"
        case Rename():
            return f"move    {show(op.src)} -> {show(op.dst)}"
        case Delete():
            return f"delete  {show(op.path)}{'/' if op.kind == Kind.DIR else ''}"
        case SetMeta():
            return f"meta    {show(op.path)}"
