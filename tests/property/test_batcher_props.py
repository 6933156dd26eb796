"""Property tests of the batcher: random schedules of writes, settled events,
removals and rescans against a caller that takes a batch whenever one is
due (and, in some runs, is busy for a while after each batch), checked
against a model of the pending episodes (an episode: a path's events from
its first one until a batch, or a rescan, carries it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from bmsync.core.batcher import Batch, Batcher

PATHS = (b"etc/a", b"etc/b", b"etc/c", b"etc/d/e", b"etc/d")
SLACK = 1e-9


@dataclass(frozen=True)
class Event:
    dt: float  # after the previous event
    path: bytes
    settled: bool
    deep: bool
    delete: bool = False  # the event removed the path
    rescan: bool = False  # events were lost instead


@dataclass(frozen=True)
class Schedule:
    window_s: float
    max_delay_s: float
    events: tuple[Event, ...]
    busy_s: tuple[float, ...] = (0.0,)  # how long each batch is in flight, in turn
    takes_first: bool = True  # on a tie, take the due batch before the event


@dataclass
class Episode:
    first: float
    last: float
    settled: bool
    deep: bool
    delete: bool
    adds: int = 1


@dataclass
class Taken:
    at: float
    batch: Batch | None
    deadline: float | None  # next_deadline() just before
    closed: dict[bytes, Episode]  # the model's episodes this batch carries
    ready: dict[bytes, bool]  # the model's ready paths and their deep flags
    rescan_due: float | None  # the model's pending rescan


@dataclass
class State:
    now: float
    deadline: float | None
    queued: int
    oldest: float | None
    model_queued: int
    model_oldest: float | None
    model_due: float | None  # when the model says a take returns something


@dataclass
class Trace:
    schedule: Schedule
    bound_s: float
    adds: int = 0
    carried: int = 0  # adds carried by a batch or a rescan
    taken: list[Taken] = field(default_factory=list)
    states: list[State] = field(default_factory=list)
    early: list[tuple[float, Batch | None]] = field(default_factory=list)
    leftover: int = 0
    phantoms: list[bytes] = field(default_factory=list)


delays = st.one_of(
    st.sampled_from([0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 2.0]),
    st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False),
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    dt = draw(delays)
    if draw(st.integers(0, 19)) == 0:
        return Event(dt, b"", settled=False, deep=False, rescan=True)
    path = draw(st.sampled_from(PATHS))
    if draw(st.integers(0, 3)) == 0:  # a removal: settled, as the watcher reports it
        return Event(dt, path, settled=draw(st.booleans()), deep=draw(st.booleans()), delete=True)
    return Event(dt, path, draw(st.booleans()), draw(st.booleans()))


@st.composite
def schedules(draw: st.DrawFn, busy: bool = False) -> Schedule:
    window = draw(
        st.one_of(
            st.sampled_from([0.0, 0.005, 0.05, 0.2]),
            st.floats(0.0, 0.5, allow_nan=False, allow_infinity=False),
        )
    )
    max_delay = draw(
        st.one_of(
            st.sampled_from([0.01, 0.1, 1.0]),
            st.floats(1e-3, 2.0, allow_nan=False, allow_infinity=False),
        )
    )
    busy_s = tuple(draw(st.lists(delays, min_size=1, max_size=5))) if busy else (0.0,)
    return Schedule(
        window_s=window,
        max_delay_s=max_delay,
        events=tuple(draw(st.lists(events(), max_size=60))),
        busy_s=busy_s,
        takes_first=draw(st.booleans()),
    )


def model_ready_at(episode: Episode, window_s: float, bound_s: float, last_delete: float) -> float:
    """When the spec says an episode is ready: a removal once no removal (of
    any path) has come for a window; else at once when its last event settled
    it, or after a quiet window; in any case by the maximum delay."""
    cap = episode.first + bound_s
    if episode.delete:
        return min(max(episode.first, last_delete + window_s), cap)
    if episode.settled:
        return episode.last
    return min(episode.last + window_s, cap)


def simulate(schedule: Schedule) -> Trace:
    """Feed the events to a batcher at their times; between them, a caller
    that is not busy takes a batch as soon as ``next_deadline()`` says one is
    due. The model follows what each batch carries."""
    b = Batcher(schedule.window_s, schedule.max_delay_s)
    trace = Trace(schedule, bound_s=b.max_delay_s)
    model: dict[bytes, Episode] = {}
    covered: list[Episode] = []  # adds the pending rescan carries (not kept by path)
    rescan_due: float | None = None
    rescan_oldest = 0.0
    last_delete = float("-inf")
    times: list[float] = []
    now = 0.0
    for event in schedule.events:
        now += event.dt
        times.append(now)
    now = 0.0
    busy_until = 0.0
    takes = 0
    i = 0

    def model_due() -> float | None:
        if rescan_due is not None:
            return rescan_due
        return min(
            (model_ready_at(e, b.window_s, b.max_delay_s, last_delete) for e in model.values()),
            default=None,
        )

    def snapshot() -> None:
        firsts = [e.first for e in model.values()]
        if rescan_due is not None:
            firsts.append(rescan_oldest)
        trace.states.append(
            State(
                now=now,
                deadline=b.next_deadline(),
                queued=b.queued,
                oldest=b.oldest(),
                model_queued=len(model) + (rescan_due is not None),
                model_oldest=min(firsts, default=None),
                model_due=model_due(),
            )
        )

    for _ in range(4 * len(schedule.events) + 4):  # each turn takes or adds
        snapshot()
        deadline = b.next_deadline()
        next_event = times[i] if i < len(times) else None
        if deadline is not None:
            take_at = max(deadline, busy_until, now)
            if next_event is None or (
                take_at < next_event or (take_at == next_event and schedule.takes_first)
            ):
                now = take_at
                ready = {
                    p: e.deep
                    for p, e in model.items()
                    if model_ready_at(e, b.window_s, b.max_delay_s, last_delete) <= now
                }
                rescan_was_due = rescan_due
                batch = b.take(now)
                closed: dict[bytes, Episode] = {}
                if batch is not None and batch.rescan:
                    closed = {str(n).encode(): e for n, e in enumerate(covered)}
                    covered.clear()
                    rescan_due = None
                elif batch is not None:
                    for path in batch.paths:
                        if path in model:
                            closed[path] = model.pop(path)
                        else:
                            trace.phantoms.append(path)
                trace.carried += sum(e.adds for e in closed.values())
                trace.taken.append(Taken(now, batch, deadline, closed, ready, rescan_was_due))
                busy_until = now + schedule.busy_s[takes % len(schedule.busy_s)]
                takes += 1
                continue
        if next_event is None:
            break
        now = next_event
        if deadline is None or now < deadline:
            trace.early.append((now, b.take(now)))  # nothing is due: nothing comes
        event = schedule.events[i]
        i += 1
        if event.rescan:
            b.rescan(now)
            if rescan_due is None:
                rescan_due = now
                rescan_oldest = min([e.first for e in model.values()] + [now])
            covered.extend(model.values())
            model.clear()
            continue
        trace.adds += 1
        b.add(event.path, now, settled=event.settled, deep=event.deep, delete=event.delete)
        if event.delete:
            last_delete = now
        if rescan_due is not None:
            covered.append(Episode(now, now, event.settled, event.deep, event.delete))
            continue
        episode = model.get(event.path)
        if episode is None:
            model[event.path] = Episode(now, now, event.settled, event.deep, event.delete)
        else:
            episode.last = now
            episode.settled = event.settled
            episode.deep = episode.deep or event.deep
            episode.delete = event.delete
            episode.adds += 1
    else:
        raise AssertionError("the caller never drained the batcher")
    snapshot()
    trace.leftover = len(model) + (rescan_due is not None) + (len(times) - i)
    return trace


@settings(max_examples=300, deadline=None)
@given(st.one_of(schedules(), schedules(busy=True)))
def test_no_event_is_lost(schedule: Schedule) -> None:
    """Every add is carried by a batch taken at or after it, or by a rescan
    batch; nothing is left queued once the caller has drained the batcher."""
    trace = simulate(schedule)
    assert trace.leftover == 0
    assert trace.phantoms == []
    assert trace.carried == trace.adds
    for taken in trace.taken:
        assert taken.batch is not None
        for episode in taken.closed.values():
            assert episode.last <= taken.at
        if taken.rescan_due is not None:
            assert taken.batch.rescan


@settings(max_examples=300, deadline=None)
@given(schedules())
def test_no_change_waits_longer_than_the_max_delay(schedule: Schedule) -> None:
    """With an idle caller that takes at every deadline, every change leaves
    within ``max_delay_s`` of the first event of its episode."""
    trace = simulate(schedule)
    assert trace.bound_s == max(schedule.max_delay_s, schedule.window_s)
    for taken in trace.taken:
        for path, episode in taken.closed.items():
            assert taken.at - episode.first <= trace.bound_s + SLACK, (path, episode, taken.at)


@settings(max_examples=300, deadline=None)
@given(schedules(busy=True))
def test_a_busy_caller_delays_by_at_most_its_own_time(schedule: Schedule) -> None:
    trace = simulate(schedule)
    limit = trace.bound_s + max(schedule.busy_s) + SLACK
    for taken in trace.taken:
        for path, episode in taken.closed.items():
            assert taken.at - episode.first <= limit, (path, episode, taken.at)


@settings(max_examples=300, deadline=None)
@given(st.one_of(schedules(), schedules(busy=True)))
def test_a_batch_holds_each_ready_path_once_with_its_last_state(schedule: Schedule) -> None:
    """A batch carries exactly the ready paths, each with the OR of its
    episode's deep flags, and reports its oldest first event."""
    trace = simulate(schedule)
    for taken in trace.taken:
        batch = taken.batch
        assert batch is not None
        if taken.rescan_due is not None or batch.rescan:
            assert batch.rescan
            assert batch.paths == {}
            assert taken.rescan_due is not None
            firsts = [e.first for e in taken.closed.values()]
            assert batch.oldest_s == min([*firsts, taken.rescan_due])
            continue
        assert batch.paths == taken.ready
        assert len(set(batch.paths)) == len(batch.paths)
        for path, deep in batch.paths.items():
            assert deep == taken.closed[path].deep
        assert batch.oldest_s == min(e.first for e in taken.closed.values())


@settings(max_examples=300, deadline=None)
@given(st.one_of(schedules(), schedules(busy=True)))
def test_next_deadline_is_none_exactly_when_nothing_is_queued(schedule: Schedule) -> None:
    trace = simulate(schedule)
    assert trace.states
    for state in trace.states:
        assert (state.deadline is None) == (state.queued == 0), state
        assert state.queued == state.model_queued, state
        assert state.oldest == state.model_oldest, state
        assert (state.deadline is None) == (state.model_due is None), state
        if state.deadline is not None and state.model_due is not None:
            # a deadline in the past means now
            due = max(state.model_due, state.now)
            assert max(state.deadline, state.now) == due, state


@settings(max_examples=300, deadline=None)
@given(st.one_of(schedules(), schedules(busy=True)))
def test_take_returns_a_batch_when_due_and_nothing_before(schedule: Schedule) -> None:
    trace = simulate(schedule)
    for taken in trace.taken:
        assert taken.deadline is not None
        assert taken.at >= taken.deadline
        assert taken.batch is not None
    for _, batch in trace.early:
        assert batch is None
