"""The ``bmsync`` command: its parser and one module per command group."""
