"""bmsync's one exception tree.

::

    BmsyncError                      exit 70 unless a subclass says otherwise
    ├── UsageError                   exit 2   bad command-line arguments
    ├── ConfigError                  exit 2   bad or missing configuration
    ├── ProtocolError                exit 4   a frame that breaks the protocol
    │   └── RemoteProtocolError               ...reported by the peer's agent
    ├── TransportError               exit 3   the SSH link to the peer
    │   ├── PeerUnreachable                   no TCP/SSH connection
    │   ├── HostKeyMismatch                   unknown or changed host key
    │   ├── AuthRefused                       the peer refused our key
    │   └── AgentFailed                       `bmsync agent` did not run
    ├── PeerRefused                  exit 5   the agent declined the session
    │   └── SplitBrainSuspected               ...because of roles or epochs
    ├── NotActive                    exit 8   this node may not send (passive, stale, suspended)
    ├── SyncPaused                   exit 9   sync is paused, or the delete-storm brake held
    │                                         deletions back: nothing was deleted
    ├── RoleStateError               exit 8   the persisted role is missing or damaged, or
    │   │                                     cannot change so (reset-epoch on an active node)
    │   └── EpochExhausted                    a promotion would pass MAX_EPOCH
    ├── ApplyIncomplete              exit 6   some paths could not be applied
    ├── LocalFsError                 exit 7   reading this node's tree failed
    ├── DaemonNotRunning             exit 3   no daemon on the control socket
    ├── DaemonRefused                exit of the daemon's error   a control request failed
    └── FencingError                 exit 10  the peer was NOT fenced (or, with --test, its
        │                                     power state could not be read)
        └── FenceToolMissing                  ipmitool, ipmipower or the fence agent is
                                              not installed

Every message says what failed, where (file and line, path, host) and what
to do. Exceptions of dependencies (asyncssh, ``OSError``, yaml) are caught at
the boundary that knows the context and re-raised as one of these with
``from exc``. Only the CLI reads ``exit_code``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bmsync.core.roles import Refusal


class BmsyncError(Exception):
    """Base of every error bmsync raises on purpose."""

    exit_code = 70


class UsageError(BmsyncError):
    exit_code = 2


class ConfigError(BmsyncError):
    exit_code = 2


class ProtocolError(BmsyncError):
    """A frame that cannot be decoded or that breaks the protocol."""

    exit_code = 4


class RemoteProtocolError(ProtocolError):
    """The peer's agent reported that our frames broke the protocol."""


class TransportError(BmsyncError):
    exit_code = 3


class PeerUnreachable(TransportError):
    pass


class HostKeyMismatch(TransportError):
    pass


class AuthRefused(TransportError):
    pass


class AgentFailed(TransportError):
    pass


class PeerRefused(BmsyncError):
    """The agent answered the handshake with a refusal (busy, wrong role...)."""

    exit_code = 5


class SplitBrainSuspected(PeerRefused):
    """The agent refused because of roles or epochs (it is active, or has
    seen a higher promotion): not a transient error, never retried past.
    ``refusal``: what the agent reported, as it reported it."""

    def __init__(self, message: str, refusal: Refusal) -> None:
        super().__init__(message)
        self.refusal = refusal


class NotActive(BmsyncError):
    """This node is not the active one, or its guard stopped sync."""

    exit_code = 8


class SyncPaused(BmsyncError):
    """Held back by a pause or by the delete-storm brake; nothing deleted."""

    exit_code = 9


class RoleStateError(BmsyncError):
    exit_code = 8


class EpochExhausted(RoleStateError):
    """A promotion would take an epoch past ``roles.MAX_EPOCH``: only a
    hostile sender's epoch gets there; the operator resets it."""


class ApplyIncomplete(BmsyncError):
    """The session ended but the agent could not apply some operations."""

    exit_code = 6


class LocalFsError(BmsyncError):
    exit_code = 7


class TreeTooLarge(LocalFsError):
    """A sync set holds more entries than ``sync.max_entries``."""


class DaemonNotRunning(BmsyncError):
    exit_code = 3


class DaemonRefused(BmsyncError):
    """The running daemon answered a control request with an error; the
    exit code is that of the error it raised."""

    def __init__(self, message: str, exit_code: int = BmsyncError.exit_code) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class HaRefused(BmsyncError):
    """An HA action was refused or failed before it changed anything it
    did not undo (another host holds the VIP, a tool failed): the message
    says what, and what to do."""

    exit_code = 10


class FencingError(HaRefused):
    """``bmsync ha fence``: the peer's power off was not confirmed; the
    message says why and what to do. Never take over while it stands."""


class FenceToolMissing(FencingError):
    """The fencing tool (ipmitool, ipmipower, the fence agent) is not
    installed."""
