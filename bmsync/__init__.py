"""bmsync: real-time, split-brain-safe configuration sync for BlueMind HA pairs."""

__version__ = "0.1.0"
