"""The sync set: which paths under a node's root bmsync owns.

A sync set is a list of top paths (trees or single files, relative to the
root) minus gitignore-style exclude rules:

- ``*`` and ``?`` never match ``/``; ``**`` matches across directories;
  ``[abc]`` and ``[!abc]`` are character classes; ``\\`` escapes.
- A pattern with a ``/`` before its end is anchored at the root
  (``/etc/hostname``, ``etc/ssh/ssh_host_*``); one without matches the name
  at any depth (``*.swp``).
- A trailing ``/`` matches directories only (``/etc/network/``).
- A leading ``!`` re-includes what an earlier rule excluded; the last
  matching rule wins. As in git, nothing below an excluded directory can be
  re-included.

Paths under an excluded directory are never scanned, written nor deleted, so
each node keeps its own identity files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bmsync.core.paths import ancestors, from_absolute, is_within


class PatternError(ValueError):
    """An exclude pattern that cannot be compiled; the message says why."""


@dataclass(frozen=True)
class Rule:
    pattern: str
    reason: str = ""
    negate: bool = field(init=False)
    dir_only: bool = field(init=False)
    regex: re.Pattern[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        body = self.pattern
        negate = body.startswith("!")
        if negate:
            body = body[1:]
        dir_only = body.endswith("/")
        body = body.rstrip("/")
        if not body:
            raise PatternError(f"exclude pattern {self.pattern!r} matches nothing")
        object.__setattr__(self, "negate", negate)
        object.__setattr__(self, "dir_only", dir_only)
        object.__setattr__(self, "regex", _compile(body))

    def matches(self, path: bytes, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        return self.regex.fullmatch(path) is not None


def _compile(glob: str) -> re.Pattern[bytes]:
    anchored = "/" in glob
    glob = glob.lstrip("/")
    out: list[str] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**", i):
            before_ok = i == 0 or glob[i - 1] == "/"
            after = glob[i + 2 : i + 3]
            if before_ok and after == "/":
                out.append("(?:.*/)?")
                i += 3
                continue
            if before_ok and after == "":
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "\\":
            if i + 1 >= len(glob):
                raise PatternError(f"exclude pattern {glob!r} ends with a lone backslash")
            out.append(re.escape(glob[i + 1]))
            i += 2
        elif c == "[":
            end = glob.find("]", i + 2)
            if end < 0:
                raise PatternError(f"exclude pattern {glob!r} has an unclosed '['")
            body = glob[i + 1 : end]
            if body.startswith("!"):
                body = "^/" + body[1:]  # as in git, a class never matches '/'
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    regex = "".join(out)
    if not anchored:
        regex = "(?:.*/)?" + regex
    try:
        return re.compile(regex.encode("utf-8", "surrogateescape"), re.DOTALL)
    except re.error as exc:
        raise PatternError(f"exclude pattern {glob!r} is not a valid glob: {exc}") from exc


@dataclass(frozen=True)
class SyncSet:
    """Top paths (relative, ``b""`` for the whole root) minus rules."""

    tops: tuple[bytes, ...]
    rules: tuple[Rule, ...] = ()

    @classmethod
    def build(cls, paths: list[str], rules: list[Rule]) -> SyncSet:
        """From configured absolute paths: dedupe tops nested in another."""
        rel = sorted({from_absolute(p) for p in paths})
        tops = tuple(t for t in rel if not any(o != t and is_within(t, o) for o in rel))
        return cls(tops=tops, rules=tuple(rules))

    def excluded(self, path: bytes, is_dir: bool) -> bool:
        """Whether the rules exclude ``path`` itself (ancestors not checked)."""
        verdict = False
        for rule in self.rules:
            if rule.negate == verdict and rule.matches(path, is_dir):
                verdict = not rule.negate
        return verdict

    def top_of(self, path: bytes) -> bytes | None:
        for top in self.tops:
            if is_within(path, top):
                return top
        return None

    def covers(self, path: bytes, is_dir: bool) -> bool:
        """Whether ``path`` belongs to the sync set: inside a top, and neither
        it nor any ancestor directory is excluded."""
        if self.top_of(path) is None:
            return False
        if any(self.excluded(a, True) for a in ancestors(path)):
            return False
        return not self.excluded(path, is_dir)

    def is_implied(self, path: bytes) -> bool:
        """Whether ``path`` is a directory above a top (``usr/share`` for
        ``/usr/share/x.yml``): created when missing, otherwise left alone."""
        return any(t != path and is_within(t, path) for t in self.tops) and (
            self.top_of(path) is None
        )
