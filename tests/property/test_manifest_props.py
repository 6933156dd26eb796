"""manifest_digest: the one figure a warm start compares instead of a whole
manifest. Equal manifests (built in any order) give equal digests; any
difference in any entry gives a different one."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from bmsync.core.manifest import manifest_digest
from tests.property.test_planner_props import Tree, trees, variants


@given(trees(), st.randoms())
def test_the_digest_does_not_depend_on_the_order_entries_were_found(
    tree: Tree, rng: random.Random
) -> None:
    items = list(tree.items())
    rng.shuffle(items)
    assert manifest_digest(dict(items)) == manifest_digest(tree)


@given(st.data())
def test_any_difference_changes_the_digest(data: st.DataObject) -> None:
    base = data.draw(trees())
    other = data.draw(st.one_of(trees(), variants(base)))
    assert (manifest_digest(other) == manifest_digest(base)) == (other == base)
