"""Policy for the shared storage the active node mounts (``ha.storage``):
which filesystems are checked before mounting by default, which may be
mounted on both nodes at once, and which may never hold cyrus's data.

Pure: the configuration applies these rules, and the mount step will."""

from __future__ import annotations

from pathlib import PurePath, PurePosixPath

# Checked with fsck before mounting unless the entry says otherwise.
FSCK_FSTYPES = frozenset({"ext2", "ext3", "ext4", "xfs"})

# The only filesystems that may be mounted on both nodes at once.
CLUSTER_FSTYPES = frozenset({"gfs2", "ocfs2"})

# Network and FUSE filesystems: never for cyrus (BlueMind HA guide: its
# spool and databases need block storage, never NFS).
NETWORK_FSTYPES = frozenset({"nfs", "nfs4", "cifs", "smb3", "sshfs", "fuse"})
CYRUS_PATHS = (PurePosixPath("/var/spool/cyrus"), PurePosixPath("/var/lib/cyrus"))


def fsck_by_default(fstype: str) -> bool:
    """Whether a mount of ``fstype`` is checked when ``fsck`` is not given."""
    return fstype in FSCK_FSTYPES


def is_network_fstype(fstype: str) -> bool:
    """nfs, nfs4, cifs, smb3, sshfs, fuse and any fuse.* (fuse.sshfs, ...)."""
    return fstype in NETWORK_FSTYPES or fstype.startswith("fuse.")


def cyrus_path_of(mount: PurePath) -> PurePosixPath | None:
    """The cyrus directory whose data a filesystem mounted at ``mount``
    would hold: ``mount`` is at or under it, or above it (an NFS /var/spool
    holds /var/spool/cyrus), if any."""
    return next(
        (top for top in CYRUS_PATHS if mount.is_relative_to(top) or top.is_relative_to(mount)),
        None,
    )
