"""Any delta rebuilds exactly the new version from its base."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bmsync.core.delta import apply_delta, literal_bytes, make_delta

lines = st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=300)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=20_000), st.binary(max_size=20_000))
def test_round_trip_on_any_bytes(base: bytes, new: bytes) -> None:
    ops = make_delta(base, new)
    assert apply_delta(base, ops) == new
    assert literal_bytes(ops) <= len(new)


@settings(max_examples=300, deadline=None)
@given(lines, st.data())
def test_round_trip_on_edited_text(base_lines: list[bytes], data: st.DataObject) -> None:
    new_lines = list(base_lines)
    for _ in range(data.draw(st.integers(0, 10))):
        where = data.draw(st.integers(0, len(new_lines)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        line = data.draw(st.binary(max_size=40).filter(lambda b: b"\n" not in b))
        if action == "insert" or not new_lines:
            new_lines.insert(where, line)
        elif action == "delete":
            del new_lines[min(where, len(new_lines) - 1)]
        else:
            new_lines[min(where, len(new_lines) - 1)] = line
    base = b"\n".join(base_lines * 40)
    new = b"\n".join(new_lines * 40)
    assert apply_delta(base, make_delta(base, new)) == new
