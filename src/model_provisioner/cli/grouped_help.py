"""The grouped ``--help``: the commands by group (models, cache, engines, server, shell), each with its one-line
summary, and the exit codes."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

#: ``--help`` lists the commands in these groups, in this order (a command in none is a test failure)
COMMAND_GROUPS = {
    "models": ("ensure", "pull", "inspect", "locate", "verify", "rm", "provision", "pin", "unpin"),
    "sharing": ("push", "export", "import"),
    "cache": ("ls", "gc", "lease", "release", "leases"),
    "engines": ("run", "up", "down", "engines", "storage-initializer"),
    "server": ("serve",),
    "shell": ("completion",),
}
EXIT_CODES = (
    "exit codes: 0 ok, 1 unexpected, 2 invalid input, 3 not found, 4 verification failed,\n"
    "  5 denied by policy or offline, 6 transfer failed, 7 out of disk space (or memory),\n"
    "  8 timed out waiting, 9 engine failed, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM)"
)


class Commands:
    """The command subparsers, keeping each command's one-line summary for the grouped ``--help``."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub
        self.summaries: dict[str, str] = {}

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        summary = kwargs.pop("help", None)
        if summary:
            self.summaries[name] = summary
        parser: argparse.ArgumentParser = self.sub.add_parser(name, description=summary, **kwargs)
        return parser

    def grouped(self) -> str:
        width = max(len(name) for name in self.summaries) + 2
        lines = []
        for group, names in COMMAND_GROUPS.items():
            lines.append(f"{group}:")
            lines += [f"  {name.ljust(width)}{self.summaries[name]}" for name in names]
        return "\n".join(lines)


# Each command's module is imported when that command runs, so a command's start-up pays for itself only
# (docs/architecture.md, "Layers"): ``ensure`` never loads the engines layer, ``up`` never loads push.
Command = Callable[[argparse.Namespace], int]


def lazy(module: str, name: str) -> Command:
    """``name`` of ``cli/<module>.py``, imported only when its command runs (see the note above)."""

    def run(args: argparse.Namespace) -> int:
        commands = importlib.import_module(f"model_provisioner.cli.{module}")
        command: Command = getattr(commands, name)
        return command(args)

    return run
