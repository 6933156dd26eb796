"""systemd's notify protocol (sd_notify), without libsystemd.

``Type=notify`` units get ``NOTIFY_SOCKET`` in their environment: a datagram
socket that takes ``READY=1``, ``STATUS=...``, ``WATCHDOG=1`` and
``STOPPING=1``. With ``WatchdogSec=``, systemd also sets ``WATCHDOG_USEC``
and restarts the service if pings stop. Outside systemd every call is a
no-op.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("bmsync.notify")


class Notifier:
    def __init__(self, environ: Mapping[str, str]) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        # '@' names a socket in the abstract namespace
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *fields: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("notify_failed", socket=self._address, error=str(exc))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def ping(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None
