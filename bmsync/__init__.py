"""bmsync: real-time, split-brain-safe configuration sync for BlueMind HA pairs."""

import sys

__version__ = "0.1.0"


def _import_structlog_without_rich() -> None:
    """structlog's dev module imports rich.traceback (and pygments with it)
    when rich is installed, only to pretty-print exceptions on a terminal:
    11 MiB resident in every daemon and agent, which never use it. Import
    structlog with rich hidden; ``import rich`` works again afterwards (the
    CLI's progress bar)."""
    if "structlog" in sys.modules:
        return
    had_rich = "rich" in sys.modules
    saved = sys.modules.get("rich")
    sys.modules["rich"] = None  # type: ignore[assignment]  # "import rich" fails
    try:
        import structlog  # noqa: F401
    finally:
        if had_rich:
            sys.modules["rich"] = saved  # type: ignore[assignment]
        else:
            del sys.modules["rich"]


_import_structlog_without_rich()
