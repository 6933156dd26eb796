"""This node's filesystem: walks that never follow an unexpected symlink,
scans, the digest cache, atomic writes, delta bases, and the tree writer
that applies a batch inside a root (confine, fileops, staging)."""
