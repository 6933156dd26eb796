"""The guard's transition table, row by row and cell by cell: the table in
bmsync/core/guard.py's docstring is the one the code runs, every event
has a row and every row a cell for each suspicion (the table is total: no
(event, suspicion) pair is left out, '.' where nothing changes), and each
cell does what it says, from each guard state (syncing, suspended,
maintenance), down both branches of each conditional cell."""

from __future__ import annotations

import typing
from collections import Counter
from dataclasses import dataclass

import pytest

from bmsync.core import guard as guard_module
from bmsync.core.guard import TABLE, Action, Event, Guard, GuardState, _Raised, classify
from bmsync.core.observations import (
    ForcedResume,
    MaintenanceSet,
    Observation,
    PeerFenced,
    PeerLost,
    PeerWelcomed,
    RoleChanged,
    VipCheckFailed,
    VipSeen,
)
from bmsync.core.roles import NodeRole, Refusal, RefusalCode, Role, Stamp
from bmsync.core.suspicions import Suspicion

ACTIVE = NodeRole("bm1").promote()  # epoch 1 (bm1)
STALE = ACTIVE.saw(Stamp(5, "bm3"))  # active, superseded by epoch 5 (bm3)
PASSIVE = NodeRole("bm1").saw(Stamp(1, "bm2"))


@dataclass(frozen=True)
class Example:
    """An observation that is ``event`` to a guard of ``role``."""

    role: NodeRole
    vip_configured: bool
    obs: Observation


def refusal(peer_role: Role, seen: Stamp, code: RefusalCode) -> Refusal:
    return Refusal("bm2", peer_role, seen, code, f"{code} said bm2")


ANY_ROLE = (ACTIVE, STALE, PASSIVE)
SENDER_NOT_ACTIVE = RefusalCode.SENDER_NOT_ACTIVE
EXAMPLES: dict[Event, list[Example]] = {
    Event.CONFIRMED: [
        Example(r, v, PeerWelcomed("bm2", r.stamp)) for r in (ACTIVE, STALE) for v in (True, False)
    ],
    Event.WELCOMED: [
        Example(PASSIVE, False, PeerWelcomed("bm2", Stamp(1, "bm2"))),
        Example(ACTIVE, False, PeerWelcomed("bm2", Stamp(2, "bm2"))),  # the peer saw higher
    ],
    Event.REFUSED_STALE: [
        Example(ACTIVE, False, refusal(Role.ACTIVE, Stamp(2, "bm2"), RefusalCode.RECEIVER_ACTIVE)),
        Example(ACTIVE, False, refusal(Role.PASSIVE, Stamp(2, "bm2"), RefusalCode.SENDER_STALE)),
        Example(STALE, False, refusal(Role.PASSIVE, Stamp(0, ""), RefusalCode.BUSY)),
    ],
    Event.REFUSED_BY_ACTIVE: [
        Example(ACTIVE, False, refusal(Role.ACTIVE, Stamp(1, "bm0"), RefusalCode.RECEIVER_ACTIVE)),
    ],
    Event.REFUSED_AS_SENDER: [
        Example(
            PASSIVE, False, refusal(Role.PASSIVE, Stamp(1, "bm2"), RefusalCode.SENDER_NOT_ACTIVE)
        ),
    ],
    Event.REFUSED: [
        Example(ACTIVE, False, refusal(Role.PASSIVE, Stamp(1, "bm1"), code))
        for code in (RefusalCode.BUSY, RefusalCode.EPOCH_RESET, RefusalCode.INCOMPATIBLE)
    ]
    + [Example(ACTIVE, False, Refusal("bm2", Role.ACTIVE, Stamp(0, ""), None, "no code"))],
    Event.LOST: [Example(r, True, PeerLost("connection refused")) for r in ANY_ROLE],
    Event.VIP_IGNORED: [
        Example(ACTIVE, False, VipSeen(held=False, other_macs=("02:00:00:00:00:02",))),
        Example(ACTIVE, False, VipCheckFailed("arping is missing")),
    ],
    Event.VIP_CLEAN: [
        Example(ACTIVE, True, VipSeen(held=True)),
        Example(PASSIVE, True, VipSeen(held=False)),
    ],
    Event.VIP_ELSEWHERE: [
        Example(ACTIVE, True, VipSeen(held=True, other_macs=("02:00:00:00:00:02",))),
        Example(PASSIVE, True, VipSeen(held=False, other_macs=("02:00:00:00:00:02", "x"))),
    ],
    Event.VIP_MISSING: [Example(ACTIVE, True, VipSeen(held=False))],
    Event.VIP_ELSEWHERE_MISSING: [Example(ACTIVE, True, VipSeen(False, ("02:00:00:00:00:02",)))],
    Event.VIP_CHECK_FAILED: [Example(r, True, VipCheckFailed("ip failed")) for r in ANY_ROLE],
    Event.FENCED: [Example(r, v, PeerFenced("bm2")) for r in ANY_ROLE for v in (True, False)],
    Event.MAINTENANCE_ON: [Example(ACTIVE, False, MaintenanceSet(True))],
    Event.MAINTENANCE_OFF: [Example(ACTIVE, False, MaintenanceSet(False))],
    Event.FORCED: [Example(r, True, ForcedResume("checked by hand")) for r in ANY_ROLE],
    Event.ROLE_ACTIVE: [  # (to a role of its own, from the same one)
        Example(r, True, RoleChanged(NodeRole("bm1", Role.ACTIVE, 7, Stamp(7, "bm1"))))
        for r in ANY_ROLE
    ],
    Event.ROLE_STALE: [Example(r, True, RoleChanged(STALE)) for r in ANY_ROLE],
    Event.ROLE_PASSIVE: [Example(r, True, RoleChanged(r.demote())) for r in ANY_ROLE],
}

# Where the guard starts: (state, suspicions raised, maintenance)
STARTS = [
    (GuardState.SYNCING, frozenset[Suspicion](), False),
    (GuardState.SUSPENDED, frozenset(Suspicion), False),
    (GuardState.MAINTENANCE, frozenset(Suspicion), True),
]


def documented_table() -> list[list[str]]:
    """The rows of the table in guard.py's docstring, each split in cells."""
    doc = guard_module.__doc__ or ""
    lines = [line.split() for line in doc.splitlines()]
    start = next(i for i, cells in enumerate(lines) if cells[:1] == ["event"])
    header = lines[start]
    assert header == ["event", *(str(s) for s in Suspicion), "action"]
    rows = []
    for cells in lines[start + 1 :]:
        if not cells:
            break
        rows.append(cells)
    return rows


def test_the_documented_table_is_the_table_the_guard_runs() -> None:
    rows = documented_table()
    code = [[str(e), *(str(x) for x in row.effects), str(row.action)] for e, row in TABLE.items()]
    assert rows == code


def test_the_table_is_total() -> None:
    assert list(TABLE) == list(Event)  # every event has a row, in order
    for row in TABLE.values():
        assert len(row.effects) == len(Suspicion)  # and a cell per suspicion
    assert set(EXAMPLES) == set(Event)  # and every row is exercised below
    kinds = {type(ex.obs) for examples in EXAMPLES.values() for ex in examples}
    assert kinds == set(typing.get_args(Observation))  # from every kind of observation


def start(example: Example, raised: frozenset[Suspicion], maintenance: bool, vip_ok: bool) -> Guard:
    guard = Guard(example.role, example.vip_configured, maintenance=maintenance)
    guard._raised = {s: _Raised(f"{s} before", 0.0) for s in Suspicion if s in raised}
    guard._vip_ok = vip_ok
    return guard


@pytest.mark.parametrize("event", list(Event))
def test_each_row_does_what_the_table_says(event: Event) -> None:
    run_row(event)


def test_both_branches_of_every_conditional_cell_are_taken() -> None:
    branches: Counter[tuple[Event, Suspicion, bool]] = Counter()
    for event in Event:
        branches += run_row(event)
    for event, row in TABLE.items():
        for what, effect in zip(Suspicion, row.effects, strict=True):
            if str(effect) in ("-s", "-v"):
                assert branches[event, what, True] and branches[event, what, False], (event, what)


def run_row(event: Event) -> Counter[tuple[Event, Suspicion, bool]]:
    """Every example of ``event`` from every start; returns which branch
    each conditional cell took, and how often."""
    branches: Counter[tuple[Event, Suspicion, bool]] = Counter()
    row = TABLE[event]
    for example in EXAMPLES[event]:
        for state, raised, maintenance in STARTS:
            for vip_ok in (True, False):
                guard = start(example, raised, maintenance, vip_ok)
                assert guard.state is state
                assert classify(example.obs, guard) is event, example
                before = (guard.role, guard.peer, guard.peer_seen, guard.forced_reason)
                transitions = guard.observe(example.obs, 1.0)
                check_action(row.action, example, guard, before, vip_ok)
                for what, effect in zip(Suspicion, row.effects, strict=True):
                    now_raised = what in guard.suspicions
                    was_raised = what in raised
                    match str(effect):
                        case "+":
                            assert now_raised and guard._raised[what].reason != f"{what} before"
                            assert guard._raised[what].since == (0.0 if was_raised else 1.0)
                        case "-":
                            assert not now_raised
                        case ".":
                            assert now_raised is was_raised
                            if was_raised:
                                assert guard._raised[what].reason == f"{what} before"
                        case "-s":
                            stale = guard.role.is_stale()
                            assert now_raised is (was_raised and stale)
                            branches[event, what, stale] += 1
                        case "-v":
                            assert now_raised is (was_raised and not guard._vip_ok)
                            branches[event, what, guard._vip_ok] += 1
                        case other:
                            raise AssertionError(f"unknown cell {other!r}")
                after = guard.state
                expected = (
                    GuardState.MAINTENANCE
                    if guard.maintenance
                    else GuardState.SUSPENDED
                    if guard.suspicions
                    else GuardState.SYNCING
                )
                assert after is expected
                assert [(t.old, t.new) for t in transitions] == (
                    [] if after is state else [(state, after)]
                )
    return branches


def check_action(
    action: Action,
    example: Example,
    guard: Guard,
    before: tuple[NodeRole, str, Stamp, str | None],
    vip_ok: bool,
) -> None:
    role, peer, peer_seen, forced = before
    obs = example.obs
    if action is Action.WELCOMED:
        assert isinstance(obs, PeerWelcomed)
        assert (guard.peer, guard.peer_seen, guard.role) == (
            obs.peer,
            obs.peer_seen,
            role.saw(obs.peer_seen),
        )
    elif action is Action.REFUSED:
        assert isinstance(obs, Refusal)
        assert (guard.peer, guard.peer_seen, guard.role) == (obs.peer, obs.seen, role.learn(obs))
    else:
        assert (guard.peer, guard.peer_seen) == (peer, peer_seen)
    if action is Action.ROLE:
        assert isinstance(obs, RoleChanged) and guard.role == obs.role
    elif action not in (Action.WELCOMED, Action.REFUSED):
        assert guard.role == role
    assert guard._vip_ok is {
        Action.VIP_CLEAN: True,
        Action.VIP_DOUBTFUL: False,
        Action.FENCED: vip_ok or not example.vip_configured,
    }.get(action, vip_ok)
    if action in (Action.MAINTENANCE_ON, Action.MAINTENANCE_OFF):
        assert guard.maintenance is (action is Action.MAINTENANCE_ON)
    if action is Action.FORCED:
        assert isinstance(obs, ForcedResume) and guard.forced_reason == obs.reason
    else:
        assert guard.forced_reason == forced
