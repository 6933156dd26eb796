"""This node's filesystem: walks that never follow an unexpected symlink,
scans, the digest cache, atomic writes, delta bases."""
