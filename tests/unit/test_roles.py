"""A peer's refusal, typed from the wire to the guard and role.json: what
it carries, which refusals suspect a split-brain, and what one teaches."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmsync.core.codec import decode_body, encode
from bmsync.core.frames import Refuse
from bmsync.core.roles import NodeRole, Refusal, RefusalCode, Role, Stamp
from bmsync.state.roles import RoleStore


def test_a_refuse_frame_becomes_a_typed_refusal() -> None:
    frame = Refuse("bm2 is active itself", "bm2", Role.ACTIVE, 3, "receiver-active", 3, "bm2")
    decoded = decode_body(encode(frame)[4:])
    assert isinstance(decoded, Refuse)
    assert decoded.refusal() == Refusal(
        "bm2", Role.ACTIVE, Stamp(3, "bm2"), RefusalCode.RECEIVER_ACTIVE, "bm2 is active itself"
    )


@pytest.mark.parametrize("code", ["", "a-code-of-a-later-version"])
def test_a_refusal_without_a_known_code_has_none_and_suspects_nothing(code: str) -> None:
    refusal = Refuse("no", "bm2", Role.ACTIVE, 1, code).refusal()
    assert refusal.code is None and not refusal.suspects_split_brain


@pytest.mark.parametrize("code", list(RefusalCode))
def test_only_refusals_about_roles_or_epochs_suspect_a_split_brain(code: RefusalCode) -> None:
    refusal = Refusal("bm2", Role.PASSIVE, Stamp(1, "bm1"), code, "r")
    about_roles = {
        RefusalCode.RECEIVER_ACTIVE,
        RefusalCode.SENDER_STALE,
        RefusalCode.SENDER_NOT_ACTIVE,
    }
    assert refusal.suspects_split_brain is (code in about_roles)


def test_a_refusal_teaches_the_highest_promotion_the_peer_has_seen() -> None:
    me = NodeRole("bm1").promote()  # epoch 1
    higher = Refusal("bm2", Role.ACTIVE, Stamp(2, "bm2"), RefusalCode.SENDER_STALE, "r")
    assert me.learn(higher).highest_seen == Stamp(2, "bm2") and me.learn(higher).is_stale()
    lower = Refusal("bm2", Role.ACTIVE, Stamp(0, ""), RefusalCode.RECEIVER_ACTIVE, "r")
    assert me.learn(lower) is me  # nothing new: unchanged, never lowered


def test_the_role_store_records_what_a_refusal_taught(tmp_path: Path) -> None:
    store = RoleStore(tmp_path, "bm1")
    store.save(NodeRole("bm1").promote(), "test: epoch 1")
    refusal = Refusal("bm2", Role.ACTIVE, Stamp(2, "bm2"), RefusalCode.SENDER_STALE, "r")
    assert store.learn(refusal).highest_seen == Stamp(2, "bm2")
    role, record = store.load_record()
    assert role.is_stale() and record is not None
    assert record.changed == "refused by bm2, which has seen epoch 2 (bm2)"
