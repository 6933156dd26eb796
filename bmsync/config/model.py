"""What a configuration file means: frozen sections, each default written
here once (the parser takes its defaults from these classes, and the README
documents the same values)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from bmsync.config.presets import BUILTIN_EXCLUDES, PRESETS, PresetPath
from bmsync.core.brake import BrakeLimits
from bmsync.core.errors import ConfigError
from bmsync.core.excludes import Rule, SyncSet
from bmsync.core.manifest import MAX_ENTRIES
from bmsync.core.storage import fsck_by_default

DEFAULT_PATH = Path("/etc/bmsync/bmsync.yaml")


@dataclass(frozen=True)
class PeerConfig:
    host: str
    port: int = 22
    user: str = "root"
    identity: Path = Path("/etc/bmsync/id_ed25519")
    known_hosts: Path = Path("/etc/bmsync/known_hosts")
    agent_command: str = "bmsync agent"
    connect_timeout_s: float = 10.0
    keepalive_interval_s: float = 15.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0


@dataclass(frozen=True)
class SyncConfig:
    preset: str = "bluemind"
    paths: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    root: Path = Path("/")
    batch_window_ms: int = 10
    max_delay_ms: int = 1000
    delete_brake_count: int = BrakeLimits.max_count
    delete_brake_share: float = BrakeLimits.max_share
    delete_brake_window_s: float = BrakeLimits.window_s
    delta_cache_mb: int = 256
    queue_limit: int = 50_000
    max_entries: int = MAX_ENTRIES


@dataclass(frozen=True)
class VipConfig:
    """The floating IP: the guard checks that the active node holds it and
    that no other MAC answers for it (duplicate address detection)."""

    address: str
    interface: str
    check_interval_s: float = 5.0
    prefix: int = 32
    arp_count: int = 5  # gratuitous ARPs sent by `vip up`
    arp_interval_ms: int = 200  # and their spacing


@dataclass(frozen=True)
class StorageConfig:
    """One filesystem mounted on the active node only (``ha.storage`` lists
    them in mount order; they are unmounted in reverse)."""

    device: Path
    mount: Path
    fstype: str
    options: tuple[str, ...] = ()
    # None (not given) becomes fsck_by_default(fstype) on creation: a
    # StorageConfig always holds True or False here.
    fsck: bool | None = None
    shared: bool = False  # mounted on both nodes at once: cluster filesystems only
    # `storage unmount`: how long a process holding the mount has between
    # SIGTERM and SIGKILL
    kill_grace_s: float = 10.0

    def __post_init__(self) -> None:
        if self.fsck is None:
            object.__setattr__(self, "fsck", fsck_by_default(self.fstype))


@dataclass(frozen=True)
class ServicesConfig:
    """The commands that start, stop and check what uses the shared data
    (each run in order, each within ``timeout_s``)."""

    start: tuple[str, ...]
    stop: tuple[str, ...]
    check: tuple[str, ...] = ()
    timeout_s: float = 300.0


@dataclass(frozen=True)
class FencingConfig:
    """How this node powers its peer off: through the peer's BMC (IPMI, with
    ipmitool or freeIPMI's ipmipower), or with a fence agent (``agent``, a
    fence_* program of Debian's fence-agents). The password stays in
    ``password_file`` (mode 0600), never on a command line."""

    address: str
    user: str
    password_file: Path
    method: str = "ipmi"
    tool: str = "ipmitool"
    port: int = 623
    interface: str = "lanplus"
    cipher_suite: int = 3
    timeout_s: float = 20.0
    retries: int = 2
    agent: str = ""


@dataclass(frozen=True)
class HaConfig:
    vip: VipConfig | None = None
    storage: tuple[StorageConfig, ...] = ()
    services: ServicesConfig | None = None
    fencing: FencingConfig | None = None


@dataclass(frozen=True)
class Config:
    node: str
    source: Path = DEFAULT_PATH
    state_dir: Path = Path("/var/lib/bmsync")
    control_socket: Path = Path("/run/bmsync/control.sock")
    peer: PeerConfig | None = None
    sync: SyncConfig = field(default_factory=SyncConfig)
    ha: HaConfig = field(default_factory=HaConfig)

    def sync_paths(self) -> list[PresetPath]:
        preset = PRESETS[self.sync.preset]
        added = [PresetPath(p, "added in sync.paths") for p in self.sync.paths]
        return [*preset.paths, *added]

    def exclude_rules(self) -> list[Rule]:
        """Preset rules, then the user's (which may re-include with ``!``),
        then bmsync's own, which nothing overrides."""
        preset = PRESETS[self.sync.preset]
        user = [Rule(p, "added in sync.exclude") for p in self.sync.exclude]
        return [*preset.excludes, *user, *BUILTIN_EXCLUDES]

    def syncset(self) -> SyncSet:
        return self._syncset

    @cached_property
    def _syncset(self) -> SyncSet:
        # built once: every batch asks for it
        return SyncSet.build([p.path for p in self.sync_paths()], self.exclude_rules())

    def brake_limits(self) -> BrakeLimits:
        sync = self.sync
        return BrakeLimits(
            sync.delete_brake_count, sync.delete_brake_share, sync.delete_brake_window_s
        )

    def require_peer(self) -> PeerConfig:
        if self.peer is None:
            raise ConfigError(
                f"{self.source}: no 'peer:' section; this command talks to the peer, "
                "so say where it is (host, identity, known_hosts)"
            )
        return self.peer
