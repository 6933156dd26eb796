"""The command registry: every command declared there is in the help, its
handler imports and takes what the command says it needs, no two commands
share a name, and building the parser (or running ``bmsync agent``) loads
neither asyncssh nor the daemon."""

from __future__ import annotations

import argparse
import inspect
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bmsync.cli.main import build_parser, main
from bmsync.cli.registry import COMMANDS, Command, Needs, walk

ALL = list(walk(COMMANDS))
LEAVES = [(path, command) for path, command in ALL if not command.subcommands]
HEAVY = ("asyncssh", "watchdog", "bmsync.sender")


def _id(item: tuple[tuple[str, ...], Command]) -> str:
    return " ".join(item[0])


def _help(
    capsys: pytest.CaptureFixture[str], *words: str, tree: tuple[Command, ...] = COMMANDS
) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*words, "--help"], tree)
    assert exited.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("item", ALL, ids=_id)
def test_every_command_is_in_the_help_of_its_group(
    item: tuple[tuple[str, ...], Command], capsys: pytest.CaptureFixture[str]
) -> None:
    path, command = item
    listed = _help(capsys, *path[:-1])
    # listed under "one of:", as "    NAME   HELP"
    entry = rf"^    {re.escape(command.name)}\s+{re.escape(command.help.split()[0])}\b"
    assert re.search(entry, listed, re.MULTILINE), listed
    assert command.help in " ".join(_help(capsys, *path).split())


@pytest.mark.parametrize("item", LEAVES, ids=_id)
def test_every_handler_imports_and_takes_what_its_command_needs(
    item: tuple[tuple[str, ...], Command],
) -> None:
    _, command = item
    handler = command.resolve()
    assert callable(handler)
    given = 1 if command.needs is Needs.NOTHING else 2  # (conf or path,) args
    assert len(inspect.signature(handler).parameters) == given, command.handler
    assert not inspect.iscoroutinefunction(handler), command.handler


@pytest.mark.parametrize("item", LEAVES, ids=_id)
def test_the_parser_dispatches_each_command_to_its_own_record(
    item: tuple[tuple[str, ...], Command],
) -> None:
    path, command = item
    required = ["--to", "1", "--reason", "r"] if command.name == "reset-epoch" else []
    args = build_parser().parse_args([*path, *required])
    assert args.bmsync_command is command


def test_no_two_commands_share_a_name() -> None:
    paths = [path for path, _ in ALL]
    assert len(paths) == len(set(paths))
    for _, group in [((), Command("bmsync", "", subcommands=COMMANDS)), *ALL]:
        names = [sub.name for sub in group.subcommands]
        assert len(names) == len(set(names)), names


def test_a_command_has_a_handler_or_sub_commands() -> None:
    with pytest.raises(ValueError):
        Command("x", "neither")
    with pytest.raises(ValueError):
        Command("x", "both", "a:b", subcommands=(Command("y", "y", "a:b"),))
    with pytest.raises(ValueError):
        Command("x", "no function", "bmsync.cli.sync")


def nested(args: argparse.Namespace) -> int:
    """The handler of the nested commands below."""
    print(f"up {args.address} {args.bmsync_command.name}")
    return 42


def test_a_group_may_hold_groups(capsys: pytest.CaptureFixture[str]) -> None:
    def address(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("address", help="the address")

    up = Command("up", "raise it", f"{__name__}:nested", needs=Needs.NOTHING, arguments=address)
    vip = Command("vip", "the VIP", subcommands=(up,))
    # in place of the real "ha" group (bmsync ha fence)
    others = tuple(command for command in COMMANDS if command.name != "ha")
    tree = (*others, Command("ha", "high availability", subcommands=(vip,)))
    assert main(["ha", "vip", "up", "10.0.0.1", "--log-level", "info"], tree) == 42
    assert capsys.readouterr().out == "up 10.0.0.1 up\n"
    assert main(["ha", "vip"], tree) == 2
    assert "bmsync ha vip: the following arguments are required: SUBCOMMAND" in (
        capsys.readouterr().err
    )
    assert "the VIP" in _help(capsys, "ha", tree=tree)
    assert "raise it" in _help(capsys, "ha", "vip", tree=tree)


# Run in a fresh interpreter: argv[1] is the code to run; prints the heavy
# modules it imported, as JSON.
SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys
    heavy = json.loads(sys.argv[2])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        exec(sys.argv[1])
    loaded = [m for m in heavy if any(n == m or n.startswith(m + ".") for n in sys.modules)]
    print(json.dumps(loaded))
    """
)


def _heavy_imports(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, code, json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_building_the_parser_imports_no_handler() -> None:
    code = "from bmsync.cli.main import build_parser; build_parser()"
    assert _heavy_imports(code) == []
    code = (
        "import bmsync.cli.registry as r, sys; "
        "assert [m for m in sys.modules if m.startswith('bmsync.')] == ['bmsync.cli', "
        "'bmsync.cli.registry'], sorted(m for m in sys.modules if m.startswith('bmsync'))"
    )
    assert _heavy_imports(code) == []


def test_the_agent_loads_neither_asyncssh_nor_the_daemon(tmp_path: Path) -> None:
    # --help, then a run that stops at once (no configuration file): the
    # dispatch to the agent, as each SSH session starts it
    code = (
        "from bmsync.__main__ import main; import sys; sys.argv[1:] = ['agent', '--help']; main()"
    )
    assert _heavy_imports(code) == []
    code = textwrap.dedent(
        f"""
        import os
        from bmsync.cli.main import main
        stdout = os.dup(1)  # the agent writes its ErrorFrame there
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        try:
            assert main(["-c", "{tmp_path / "none.yaml"}", "agent"]) == 2
        finally:
            os.dup2(stdout, 1)
        """
    )
    assert _heavy_imports(code) == []
