"""Command line: ``model-provisioner`` (alias ``mprov``). Results go to stdout (one JSON object with
``--json``); human messages, warnings and errors go to stderr, one line each. The grammar is in ``parser``,
the commands in ``model_commands``, ``cache_commands``, ``share_commands`` (push, serve), ``engine_commands`` and
``kserve``; what every command starts from in ``context``, how it speaks in ``output``; the error handling in
``main``."""

from model_provisioner.cli.main import engine_main, main

__all__ = ["engine_main", "main"]
