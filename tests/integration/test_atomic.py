"""A reader on the passive node only ever sees whole versions of a file
while resync replaces it, over a real SSH connection."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bmsync.config.parse import load
from bmsync.core.frames import Purpose
from bmsync.link.session import PeerSession
from bmsync.link.ssh import connect
from bmsync.sender.reconcile import resync
from tests.helpers import VersionReader
from tests.integration.conftest import Pair

SIZE = 1024 * 1024
VERSIONS = 200


def test_reader_sees_only_complete_versions(pair: Pair) -> None:
    target = pair.active / "etc" / "big.db"
    target.parent.mkdir()
    versions = [bytes([i % 251]) * SIZE for i in range(VERSIONS)]
    passive_file = pair.passive / "etc" / "big.db"

    async def replace_all() -> None:
        conf = load(pair.active_conf)
        assert conf.peer is not None
        session = PeerSession(await connect(conf.peer), conf.node)
        try:
            await session.open(Purpose.WRITE)
            for version in versions:
                target.write_bytes(version)
                report = await resync(session, conf.sync.root, conf.syncset())
                assert report.converged and report.files_sent == 1
        finally:
            await session.close()

    with VersionReader(passive_file, versions) as reader:
        asyncio.run(replace_all())
    assert reader.torn == []
    assert len(set(reader.seen)) > 20  # the reader really raced the writer
    assert passive_file.read_bytes() == versions[-1]
    assert not any(p.name.startswith(".bmsync-tmp.") for p in Path(pair.passive).rglob("*"))
