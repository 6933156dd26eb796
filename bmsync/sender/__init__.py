"""The active node's side: the watcher and the daemon that sends changes."""
