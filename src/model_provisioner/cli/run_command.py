"""``run REF [PROMPT]``: the ``ollama run`` of verified models (docs/engines.md, "run").

The model is ensured (every verification rule), its engine started with ``up`` (or a ready pool already
serving the same verified model is reused), then the engine's ``/v1/chat/completions`` is asked with
``stream: true`` (llama-server applies the GGUF's chat template) and each delta printed as it arrives. With
PROMPT: the answer on stdout, everything else on stderr, then exit. Without: a chat (``/bye`` or Ctrl-D
leaves; Ctrl-C stops the answer being written, Ctrl-C at the prompt leaves). The engine ``run`` started is
stopped on exit unless ``--keep``."""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from typing import Any
from urllib.parse import urlsplit

from model_provisioner.api import engines as engine_api
from model_provisioner.api.provisioner import ModelProvisioner
from model_provisioner.cli.context import provisioner
from model_provisioner.cli.engine_commands import up_installing
from model_provisioner.cli.output import PROG
from model_provisioner.config.engine_run import EngineRun
from model_provisioner.core.errors import EngineFailed, InvalidInput
from model_provisioner.core.redact import redact_text
from model_provisioner.engines.pools import pools
from model_provisioner.engines.state import PoolState

#: the longest line of one streamed event we read (a delta is a few tokens)
MAX_EVENT = 1 << 20
#: how long one answer may go without a byte (the engine is local and already loaded)
READ_TIMEOUT_S = 300.0


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        sys.stderr.write(f"{PROG}: {text}\n")


def _reusable(prov: ModelProvisioner, model_id: str, digest: str) -> PoolState | None:
    """A ready llama.cpp pool already serving exactly this verified model."""
    for state in pools(prov):
        if (
            state.state == "ready"
            and state.engine == "llamacpp"
            and state.model_id == model_id
            and state.digest == digest
        ):
            return state
    return None


def cmd_run(args: argparse.Namespace) -> int:
    if args.max_tokens is not None and not 1 <= args.max_tokens <= 1 << 20:
        raise InvalidInput(f"--max-tokens {args.max_tokens} must be between 1 and {1 << 20}")
    prompt = args.prompt
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read(1 << 20)  # piped input is one prompt, as ollama reads it
    if prompt is not None and not prompt.strip():
        raise InvalidInput('nothing to ask: give a PROMPT (run REF "Hello") or pipe text to run REF')
    with provisioner(args) as prov:
        resolved = prov.ensure_present(args.ref, args.digest)
        state = _reusable(prov, resolved.id, resolved.digest)
        started_here = state is None
        if state is None:
            pool = f"run-{resolved.digest.split(':', 1)[-1][:12]}"
            run = EngineRun(kind="llamacpp", pool=pool, binary=args.binary, flags=tuple(args.flag))
            state = up_installing(args, prov, run)
            _say(args, f"{state.model_id} ready at {state.url} (pool {state.pool_id}, log {state.log_path})")
        else:
            _say(args, f"using pool {state.pool_id} at {state.url}, already serving {state.model_id}")
        try:
            if prompt is not None:
                _answer(args, state, _messages(args, [], prompt))
            else:
                _chat(args, state)
        finally:
            if started_here and not args.keep:
                engine_api.down(prov, state.pool_id, forget=True)
                _say(args, f"stopped pool {state.pool_id}")
            elif started_here:
                _say(
                    args,
                    f"pool {state.pool_id} keeps running at {state.url}; stop it with `{PROG} down --pool "
                    f"{state.pool_id}`",
                )
    return 0


def _messages(args: argparse.Namespace, history: list[dict[str, str]], prompt: str) -> list[dict[str, str]]:
    system = [{"role": "system", "content": args.system}] if args.system else []
    return [*system, *history, {"role": "user", "content": prompt}]


def _chat(args: argparse.Namespace, state: PoolState) -> None:
    history: list[dict[str, str]] = []
    sys.stderr.write("Send a message (/bye to leave, Ctrl-C stops an answer)\n")
    while True:
        try:
            sys.stderr.write(">>> ")
            sys.stderr.flush()
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            return
        if not line or line.strip() == "/bye":
            return
        if not line.strip():
            continue
        try:
            answer = _answer(args, state, _messages(args, history, line.rstrip("\n")))
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            sys.stderr.write("(stopped)\n")
            continue
        history += [{"role": "user", "content": line.rstrip("\n")}, {"role": "assistant", "content": answer}]


def _answer(args: argparse.Namespace, state: PoolState, messages: list[dict[str, str]]) -> str:
    """Stream one answer to stdout as it arrives; returns it. The engine is ours, on loopback: a plain
    HTTP/1.1 connection from the standard library (no client library to import before the first token)."""
    body: dict[str, Any] = {"model": state.model_id, "messages": messages, "stream": True}
    if args.max_tokens:
        body["max_tokens"] = args.max_tokens
    where = urlsplit(state.url)
    conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=READ_TIMEOUT_S)
    parts: list[str] = []
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            detail = response.read(300).decode("utf-8", "replace")
            raise EngineFailed(
                f"pool {state.pool_id}: the engine answered HTTP {response.status}: {redact_text(detail)}"
            )
        while raw := response.readline(MAX_EVENT):
            text = _delta(raw.decode("utf-8", "replace").rstrip("\r\n"))
            if text is None:
                break
            if text:
                parts.append(text)
                sys.stdout.write(text)
                sys.stdout.flush()
    except (OSError, http.client.HTTPException) as exc:
        raise EngineFailed(f"pool {state.pool_id}: the engine at {state.url} stopped answering: {exc}") from None
    finally:
        conn.close()  # also when interrupted: the engine sees the request closed and stops generating
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(parts)


def _delta(line: str) -> str | None:
    """The content of one server-sent event line; None at ``[DONE]``, "" for anything else."""
    if not line.startswith("data:"):
        return ""
    payload = line[5:].strip()
    if payload == "[DONE]":
        return None
    try:
        event = json.loads(payload)
        content = event["choices"][0]["delta"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""
    return content if isinstance(content, str) else ""
