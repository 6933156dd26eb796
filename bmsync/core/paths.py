"""Relative paths as the core and the protocol see them.

A path is ``bytes`` relative to a node's ``sync.root``, components joined by
``/``, with no leading or trailing slash: ``b"etc/ssh/sshd_config"``. Bytes,
not ``str``, because file names on Linux are bytes and ``/etc`` can hold names
that are not UTF-8. The empty path is the root itself and never an entry.
"""

from __future__ import annotations

from collections.abc import Iterator

from bmsync.core.errors import ProtocolError

# Linux's NAME_MAX and PATH_MAX: a longer name cannot exist on the receiver.
NAME_MAX = 255
PATH_MAX = 4096


def check_relpath(path: bytes) -> bytes:
    """Return ``path`` if it is a normalised relative path, else raise.

    Raises ProtocolError naming the defect: a peer that sends such a path is
    either broken or hostile, and nothing is written for it.
    """
    if not path:
        raise ProtocolError("empty path")
    if len(path) > PATH_MAX:
        raise ProtocolError(f"path longer than {PATH_MAX} bytes: {show(path[:64])}...")
    if b"\0" in path:
        raise ProtocolError(f"path contains a NUL byte: {show(path)}")
    if path.startswith(b"/"):
        raise ProtocolError(f"absolute path not allowed: {show(path)}")
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            raise ProtocolError(f"path component {part!r} not allowed in {show(path)}")
        if len(part) > NAME_MAX:
            raise ProtocolError(f"name longer than {NAME_MAX} bytes in {show(path)}")
    return path


def parent(path: bytes) -> bytes:
    """``b"etc/ssh/x"`` -> ``b"etc/ssh"``; a top-level name -> ``b""``."""
    cut = path.rfind(b"/")
    return b"" if cut < 0 else path[:cut]


def basename(path: bytes) -> bytes:
    return path[path.rfind(b"/") + 1 :]


def ancestors(path: bytes) -> Iterator[bytes]:
    """Proper ancestors, nearest first, excluding the root ``b""``."""
    current = parent(path)
    while current:
        yield current
        current = parent(current)


def is_within(path: bytes, top: bytes) -> bool:
    """True if ``path`` is ``top`` or below it (``top == b""`` is the root)."""
    return not top or path == top or path.startswith(top + b"/")


def depth(path: bytes) -> int:
    return path.count(b"/") + 1 if path else 0


def join(top: bytes, name: bytes) -> bytes:
    return top + b"/" + name if top else name


def from_absolute(text: str) -> bytes:
    """A configured absolute path (``/etc/aliases``) as a relative path."""
    return text.encode("utf-8", "surrogateescape").strip(b"/")


def show(path: bytes) -> str:
    """A path for people: ``/``-rooted, undecodable bytes and control
    characters escaped so a newline in a name cannot forge an output line."""
    text = "/" + path.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
