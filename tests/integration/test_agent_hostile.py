"""A hostile sender (the active node's key has leaked) against a real
``bmsync agent`` process: each attack of issue 11 item 11 ends the session
with a protocol error or is not applied, and the agent's peak resident
memory (ru_maxrss, measured by the kernel for that process alone) stays
under the bound the README states, whatever the load on the machine.

Scaled to a few seconds; bench/agent_memory.py runs them at the issue's
scale and prints the figures."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from bmsync.agent.bounds import MAX_BATCH_HELD_BYTES
from bmsync.core.delta import DELTA_MAX_BYTES, MAX_DELTA_OPS
from bmsync.core.frames import CHUNK_BYTES, Put, PutChunk
from bmsync.core.manifest import new_hasher
from tests import hostile

MIB = 1024 * 1024
# README, "How it works": the agent's peak memory, whatever it is sent.
PEAK_BOUND_MIB = 100


@pytest.fixture
def passive(tmp_path: Path) -> hostile.Passive:
    return hostile.Passive.make(tmp_path / "passive")


def run(passive: hostile.Passive, stream: Iterable[bytes]) -> hostile.AgentRun:
    done = hostile.run_agent(passive.config, stream, passive.root.parent / "agent.log")
    assert done.peak_mib < PEAK_BOUND_MIB, (done.peak_mib, done.stderr[-2000:])
    return done


def test_expect_frames_without_a_commit(passive: hostile.Passive) -> None:
    before = passive.files()
    done = run(passive, hostile.expect_flood(50_000_000))
    (error,) = done.errors()
    assert f"would keep more than {MAX_BATCH_HELD_BYTES} bytes until its Commit" in error
    assert "(at Expect /etc/000" in error
    assert done.exit_code == 4
    assert done.sent_bytes < 10_000_000 and done.write_error  # it hung up, and read no more
    assert passive.files() == before


def test_a_zlib_bomb_inflates_no_further_than_the_declared_size(
    passive: hostile.Passive,
) -> None:
    before = passive.files()
    # 256 MiB of zeros in 250 KB, for a result that claims 64 MiB
    done = run(passive, hostile.zlib_bomb(256 * MIB, 64 * MIB, passive.base))
    (applied,) = done.applied()
    assert [f.reason for f in applied.failures] == [
        f"bad delta: literal data inflates past {64 * MIB} bytes (the room left in a "
        f"result of at most {64 * MIB})"
    ]
    assert done.exit_code == 0 and done.errors() == []
    assert passive.files() == before  # no temporary file left either


def test_a_flood_of_copy_operations_is_refused_before_it_is_built(
    passive: hostile.Passive,
) -> None:
    before = passive.files()
    done = run(passive, hostile.copy_flood(268_435, 1000, passive.base))
    assert done.errors() == [
        f"malformed frame: Expected `array` of length <= {MAX_DELTA_OPS} - at `$.ops`"
    ]
    assert done.exit_code == 4 and done.applied() == []
    assert passive.files() == before


def test_a_delta_at_the_operation_limit_is_built_on_disk_not_in_memory(
    passive: hostile.Passive,
) -> None:
    """65,536 copies of 1 KiB: a 64 MiB result, within every limit, with the
    right digest: applied, a piece at a time."""
    piece = passive.base[:1024]
    digest = new_hasher()
    for _ in range(MAX_DELTA_OPS):
        digest.update(piece)
    stream = list(hostile.copy_flood(MAX_DELTA_OPS, 1024, passive.base))
    stream[1] = stream[1].replace(b"\x5a" * 16, digest.digest())  # the result's digest
    done = run(passive, stream)
    (applied,) = done.applied()
    assert applied.failures == []
    assert (passive.root / "etc/base.bin").stat().st_size == MAX_DELTA_OPS * 1024 <= DELTA_MAX_BYTES


def test_a_batch_kept_to_its_bound_and_the_largest_frame_stay_under_the_bound(
    passive: hostile.Passive,
) -> None:
    done = run(passive, hostile.worst_case(MAX_BATCH_HELD_BYTES - 2 * MIB, passive.base))
    (applied,) = done.applied()
    assert [path for path, _ in applied.results] == [hostile.BASE_PATH]  # the delta, applied
    assert done.exit_code == 0


def test_a_fetch_of_a_large_file_is_streamed(tmp_path: Path) -> None:
    passive = hostile.Passive.make(tmp_path / "passive", big_file=256 * MIB)
    done = run(passive, hostile.fetch(hostile.BIG_PATH))
    assert [type(f) for f in done.replies[1:]] == [PutChunk] * 255 + [Put]
    assert sum(len(f.data) for f in done.replies[1:] if isinstance(f, PutChunk | Put)) == (
        256 * CHUNK_BYTES
    )
