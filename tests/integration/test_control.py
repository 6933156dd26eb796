"""The daemon's control socket (bmsync/service/control.py), over a real unix
socket: what `bmsync status`, `pause` and friends rely on."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from bmsync.core.errors import BmsyncError, DaemonNotRunning, SyncPaused
from bmsync.service.control import MAX_REQUEST_BYTES, ControlServer, request


async def echo(req: dict[str, Any]) -> dict[str, Any]:
    if req["command"] == "pause":
        raise SyncPaused("paused by an operator")
    return {"ok": True, "got": req}


def raw(path: Path, data: bytes) -> dict[str, Any]:
    """Send ``data`` as it is and read the answer (blocking: the server runs
    in the loop of the calling coroutine's thread, see ``in_thread``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(path))
        client.sendall(data)
        answer = b""
        while not answer.endswith(b"\n"):
            piece = client.recv(65536)
            if not piece:
                break
            answer += piece
    result: dict[str, Any] = json.loads(answer)
    return result


def test_a_request_is_answered_on_a_root_only_socket(tmp_path: Path) -> None:
    path = tmp_path / "run" / "control.sock"

    async def main() -> None:
        server = ControlServer(path, echo)
        await server.start()
        try:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            answer = await request(path, "status", 5, verbose=True)
            assert answer == {"ok": True, "got": {"command": "status", "verbose": True}}
        finally:
            await server.close()
        assert not path.exists()

    asyncio.run(main())


def test_an_error_carries_its_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"

    async def main() -> dict[str, Any]:
        server = ControlServer(path, echo)
        await server.start()
        try:
            return await request(path, "pause", 5)
        finally:
            await server.close()

    assert asyncio.run(main()) == {
        "ok": False,
        "error": "paused by an operator",
        "exit_code": SyncPaused.exit_code,
    }


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"not json\n", "bad control request: Expecting value"),
        (b"[1, 2]\n", "expected a JSON object with a 'command'"),
        (b'{"verb": "status"}\n', "expected a JSON object with a 'command'"),
        (b'{"command": 7}\n', "expected a JSON object with a 'command'"),
        (b'{"command": "' + b"x" * MAX_REQUEST_BYTES + b'"}\n', "request too large"),
    ],
)
def test_bad_requests_get_a_clear_answer(tmp_path: Path, data: bytes, error: str) -> None:
    path = tmp_path / "control.sock"

    async def main() -> dict[str, Any]:
        server = ControlServer(path, echo)
        await server.start()
        try:
            return await asyncio.to_thread(raw, path, data)
        finally:
            await server.close()

    answer = asyncio.run(main())
    assert answer["ok"] is False
    assert error in answer["error"]


def test_a_socket_left_by_a_dead_daemon_is_replaced_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(path))  # bound, never listening: what a killed daemon leaves
    left.close()

    async def main() -> None:
        first = ControlServer(path, echo)
        await first.start()
        try:
            with pytest.raises(BmsyncError, match="another 'bmsync run' answers there"):
                await ControlServer(path, echo).start()
            assert (await request(path, "status", 5))["ok"] is True
        finally:
            await first.close()

    asyncio.run(main())


def test_no_daemon_is_an_error_that_says_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning, match="'systemctl start bmsync' or 'bmsync run'"):
        asyncio.run(request(tmp_path / "none.sock", "status", 5))


def test_a_daemon_that_never_answers_times_out_with_the_command_named(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"

    async def main() -> None:
        never = asyncio.Event()

        async def stuck(req: dict[str, Any]) -> dict[str, Any]:
            await never.wait()
            return {}

        server = ControlServer(path, stuck)
        await server.start()
        try:
            with pytest.raises(BmsyncError, match=r"did not answer 'resync' within 0\.2 s"):
                await request(path, "resync", 0.2)
        finally:
            never.set()
            await server.close()

    asyncio.run(main())


def test_closing_lets_an_answer_being_made_reach_its_client(tmp_path: Path) -> None:
    """`bmsync demote` is answered while the daemon stops."""
    path = tmp_path / "control.sock"

    async def main() -> dict[str, Any]:
        started, release = asyncio.Event(), asyncio.Event()

        async def slow(req: dict[str, Any]) -> dict[str, Any]:
            started.set()
            await release.wait()
            return {"ok": True, "demoted": True}

        server = ControlServer(path, slow)
        await server.start()
        asked = asyncio.create_task(request(path, "demote", 10))
        await started.wait()
        closing = asyncio.create_task(server.close())
        await asyncio.sleep(0)
        release.set()
        await closing
        return await asked

    assert asyncio.run(main()) == {"ok": True, "demoted": True}
