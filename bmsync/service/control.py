"""The daemon's control socket: one JSON request per connection, one JSON
answer. A unix socket with mode 0600 (root only): ``bmsync status``,
``pause``, ``resume`` and ``resync`` talk to the running daemon through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from bmsync.core.errors import BmsyncError, DaemonNotRunning, DaemonRefused

log = structlog.get_logger("bmsync.control")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# Requests are a few bytes; anything larger is not ours.
MAX_REQUEST_BYTES = 64 * 1024
# How long closing waits for answers still being written (`bmsync demote`
# is answered as the daemon stops).
CLOSE_WAIT_S = 5.0


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self._path = path
        self._handler = handler
        self._server: asyncio.base_events.Server | None = None
        self._serving: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self._path.exists() or self._path.is_symlink():
            if _answers(self._path):
                raise BmsyncError(
                    f"control socket {self._path}: another 'bmsync run' answers there; "
                    "stop it first, or give this one its own control_socket"
                )
            self._path.unlink()  # left by a daemon that died
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self._path), limit=MAX_REQUEST_BYTES
            )
        finally:
            os.umask(old_umask)
        os.chmod(self._path, 0o600)

    async def close(self) -> None:
        """Stop listening; answers being written still reach their client."""
        if self._server is not None:
            self._server.close()
            if self._serving:
                await asyncio.wait(self._serving, timeout=CLOSE_WAIT_S)
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)
        try:
            try:
                line = await _read_request(reader)
                request = json.loads(line)
                if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                    raise ValueError("expected a JSON object with a 'command'")
                answer = await self._handler(request)
            except ValueError as exc:
                answer = {"ok": False, "error": f"bad control request: {exc}"}
            except BmsyncError as exc:
                answer = {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("control_client_gone", error=str(exc))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readline()
    except ValueError as exc:  # the stream's limit: MAX_REQUEST_BYTES
        raise ValueError(f"request too large (more than {MAX_REQUEST_BYTES} bytes)") from exc


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


async def request(path: Path, command: str, timeout_s: float, **args: Any) -> dict[str, Any]:
    """Send one command to the daemon on ``path``; its JSON answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout=5)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise DaemonNotRunning(
            f"no bmsync daemon answers on {path} (control_socket); start it with "
            "'systemctl start bmsync' or 'bmsync run'"
        ) from exc
    except (TimeoutError, OSError) as exc:
        raise DaemonNotRunning(f"cannot reach the daemon on {path}: {exc}") from exc
    try:
        writer.write(json.dumps({"command": command, **args}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout=timeout_s)
    except TimeoutError as exc:
        raise BmsyncError(f"the daemon did not answer '{command}' within {timeout_s:g} s") from exc
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    try:
        answer = json.loads(line)
    except ValueError as exc:
        raise BmsyncError(f"the daemon's answer is not JSON: {line[:200]!r}") from exc
    if not isinstance(answer, dict):
        raise BmsyncError(f"the daemon's answer is not an object: {line[:200]!r}")
    return answer


def check_answer(answer: dict[str, Any], what: str = "the daemon says") -> None:
    """A refusal by the daemon raises, with the exit code it gives."""
    if not answer.get("ok", False):
        raise DaemonRefused(
            f"{what}: {answer.get('error', answer)}",
            int(answer.get("exit_code", DaemonRefused.exit_code)),
        )
