"""``bmsync`` and ``python -m bmsync``: the command line."""

import sys


def _import_structlog_without_rich() -> None:
    """structlog's dev module imports rich.traceback (and pygments with it)
    when rich is installed, only to pretty-print exceptions on a terminal:
    11 MiB resident in every daemon and agent, which never use it. Import
    structlog with rich hidden, before anything else imports it; ``import
    rich`` works again afterwards (the CLI's progress bar)."""
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


def main() -> int:
    _import_structlog_without_rich()
    from bmsync.cli.main import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
