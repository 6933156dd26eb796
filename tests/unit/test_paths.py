"""Relative byte paths: validation of what a peer may send, and helpers."""

from __future__ import annotations

import pytest

from bmsync.core.errors import ProtocolError
from bmsync.core.paths import (
    NAME_MAX,
    PATH_MAX,
    ancestors,
    basename,
    check_relpath,
    depth,
    from_absolute,
    is_within,
    join,
    parent,
    show,
)


@pytest.mark.parametrize(
    "path",
    [
        b"etc",
        b"etc/ssh/sshd_config",
        b"etc/\xff\xfe-not-utf8",
        b"etc/caf\xc3\xa9",
        b"etc/with space/and more spaces",
        b"etc/line\nbreak",
        b"etc/tab\there",
        b".hidden",
        b"etc/...",
        b"etc/..x",
        b"etc/.x",
        b"x" * NAME_MAX,
        b"etc/" + b"y" * NAME_MAX,
        b"a\\b",
    ],
)
def test_check_relpath_accepts(path: bytes) -> None:
    assert check_relpath(path) is path


def test_check_relpath_accepts_path_of_exactly_path_max() -> None:
    part = b"p" * 200
    path = b"/".join([part] * 20)  # 4019 bytes
    path += b"/" + b"q" * (PATH_MAX - len(path) - 1)
    assert len(path) == PATH_MAX
    assert check_relpath(path) == path


@pytest.mark.parametrize(
    ("path", "words"),
    [
        (b"", "empty"),
        (b"/etc", "absolute"),
        (b"/", "absolute"),
        (b"..", "'..'"),
        (b"../etc", "'..'"),
        (b"a/../b", "'..'"),
        (b"a/..", "'..'"),
        (b"a//b", "b''"),
        (b"./a", "'.'"),
        (b"a/./b", "'.'"),
        (b".", "'.'"),
        (b"etc/", "b''"),
        (b"etc\0x", "NUL"),
        (b"\0", "NUL"),
        (b"etc/" + b"z" * (NAME_MAX + 1), "name longer"),
        (b"z" * (NAME_MAX + 1), "name longer"),
        (b"/".join([b"a" * 200] * 21), "longer than 4096"),
    ],
)
def test_check_relpath_rejects(path: bytes, words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        check_relpath(path)
    assert words in str(info.value)


def test_check_relpath_rejects_path_max_plus_one() -> None:
    path = b"/".join([b"p" * 200] * 20)
    path += b"/" + b"q" * (PATH_MAX - len(path))
    assert len(path) == PATH_MAX + 1
    with pytest.raises(ProtocolError):
        check_relpath(path)


def test_check_relpath_error_message_is_one_line() -> None:
    with pytest.raises(ProtocolError) as info:
        check_relpath(b"a\n/../b")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"etc/ssh/sshd_config", b"etc/ssh"),
        (b"etc/ssh", b"etc"),
        (b"etc", b""),
        (b"etc/\xff/x", b"etc/\xff"),
    ],
)
def test_parent(path: bytes, expected: bytes) -> None:
    assert parent(path) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"etc/ssh/sshd_config", b"sshd_config"),
        (b"etc", b"etc"),
        (b"etc/a b", b"a b"),
    ],
)
def test_basename(path: bytes, expected: bytes) -> None:
    assert basename(path) == expected


def test_parent_and_basename_rebuild_the_path() -> None:
    for path in (b"etc", b"etc/a", b"etc/a/b/c"):
        assert join(parent(path), basename(path)) == path


def test_ancestors_nearest_first_without_root() -> None:
    assert list(ancestors(b"etc/a/b/c")) == [b"etc/a/b", b"etc/a", b"etc"]
    assert list(ancestors(b"etc/a")) == [b"etc"]
    assert list(ancestors(b"etc")) == []


@pytest.mark.parametrize(
    ("path", "top", "expected"),
    [
        (b"etc", b"etc", True),
        (b"etc/a", b"etc", True),
        (b"etc/a/b", b"etc", True),
        (b"etcetera", b"etc", False),
        (b"etc2/a", b"etc", False),
        (b"et", b"etc", False),
        (b"etc", b"etc/a", False),
        (b"usr/share", b"", True),
        (b"etc/a", b"etc/a", True),
    ],
)
def test_is_within(path: bytes, top: bytes, expected: bool) -> None:
    assert is_within(path, top) is expected


def test_depth_and_join() -> None:
    assert depth(b"") == 0
    assert depth(b"etc") == 1
    assert depth(b"etc/a/b") == 3
    assert join(b"", b"etc") == b"etc"
    assert join(b"etc", b"a") == b"etc/a"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/etc", b"etc"),
        ("/etc/", b"etc"),
        ("/", b""),
        ("/etc/aliases", b"etc/aliases"),
    ],
)
def test_from_absolute(text: str, expected: bytes) -> None:
    assert from_absolute(text) == expected


def test_show_plain_path() -> None:
    assert show(b"etc/ssh/sshd_config") == "/etc/ssh/sshd_config"
    assert show(b"") == "/"
    assert show(b"etc/caf\xc3\xa9") == "/etc/caf\u00e9"


def test_show_escapes_newline_so_it_cannot_forge_a_line() -> None:
    shown = show(b"etc/evil\nmkdir   /etc/forged")
    assert "\n" not in shown
    assert shown == "/etc/evil\\nmkdir   /etc/forged"
    assert len(shown.splitlines()) == 1


@pytest.mark.parametrize(
    "path",
    [
        b"etc/a\rb",
        b"etc/a\x1b[31mred",
        b"etc/a\tb",
        b"etc/a\xe2\x80\xa8b",  # U+2028 LINE SEPARATOR
        b"etc/a\xc2\x85b",  # U+0085 NEXT LINE
        b"etc/a\x0bb\x0cc",
    ],
)
def test_show_escapes_control_characters(path: bytes) -> None:
    shown = show(path)
    assert shown.isprintable()
    assert len(shown.splitlines()) == 1


def test_show_escapes_undecodable_bytes() -> None:
    shown = show(b"etc/\xff\xfe")
    assert shown == "/etc/\\xff\\xfe"
    assert shown.isprintable()
