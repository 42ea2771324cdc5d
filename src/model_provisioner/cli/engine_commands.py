"""Commands about engines: up, engines, down, the pool supervisor (hidden), and ``engine-provisioner``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from model_provisioner.api import engines as engine_api
from model_provisioner.api.provisioner import ModelProvisioner
from model_provisioner.cli.context import provisioner, provisioner_settings
from model_provisioner.cli.output import PROG, ago, emit, write_table
from model_provisioner.config.engine_run import EngineRun, load_engine_config
from model_provisioner.config.settings import api_settings
from model_provisioner.core.errors import EngineNotInstalled, InvalidInput, ProvisionerError
from model_provisioner.core.redact import redact_text
from model_provisioner.engines.state import PoolState, state_from_json
from model_provisioner.engines.supervisor import supervise


def _announce(args: argparse.Namespace, state: PoolState, took_ms: int) -> None:
    payload = state.as_json()
    if not args.quiet and not args.json:
        sys.stderr.write(
            f"{PROG}: pool {state.pool_id}: {state.engine} ready at {state.url} on {state.model_id} "
            f"({state.digest}), pid {state.pid}, {took_ms} ms; log {state.log_path}\n"
        )
    emit(args, payload, state.url)


def cmd_up(args: argparse.Namespace) -> int:
    run = EngineRun(
        kind=args.engine,
        pool=args.pool,
        replica=args.replica,
        host=args.host,
        port=args.port,
        binary=args.binary,
        flags=tuple(args.flag),
    )
    if args.bom and not args.handoff_dir:
        raise InvalidInput("--bom writes the AI-BOM beside the handoff: add --handoff-dir DIR")
    started = time.monotonic()
    with provisioner(args) as prov:
        state = up_installing(args, prov, run)
        if args.bom and state.handoff:
            from model_provisioner.api.bom import write_beside  # noqa: PLC0415  # heavy: cyclonedx, only for --bom

            written = write_beside(prov, state.model_id, Path(state.handoff))
            if not args.quiet and not args.json:
                sys.stderr.write(f"{PROG}: AI-BOM written to {written}\n")
    _announce(args, state, int((time.monotonic() - started) * 1000))
    return 0


def up_installing(args: argparse.Namespace, prov: ModelProvisioner, run: EngineRun) -> PoolState:
    """``up``; with no engine found, the install ``engines.auto_install`` allows, then ``up`` again."""
    strict = getattr(args, "strict", None)
    handoff_dir = getattr(args, "handoff_dir", None)
    try:
        state, _ = engine_api.up(prov, args.ref, run, digest=args.digest, strict=strict, handoff_dir=handoff_dir)
    except EngineNotInstalled as missing:
        from model_provisioner.cli.install_commands import offer_install  # noqa: PLC0415  # ~30 ms: only with no engine

        offer_install(args, prov, missing)
        state, _ = engine_api.up(prov, args.ref, run, digest=args.digest, strict=strict, handoff_dir=handoff_dir)
    return state


def cmd_engine_config(args: argparse.Namespace) -> int:
    """``engine-provisioner --config FILE [--pool ID]``."""
    config, run = load_engine_config(args.config)
    if args.pool:
        run = EngineRun(**{**run.__dict__, "pool": args.pool})
    started = time.monotonic()
    with provisioner(args) as prov:
        digest = str(config.expected_digest) if config.expected_digest else None
        state, _ = engine_api.up(
            prov, config.model_ref.id, run, digest=digest, strict=config.strict, handoff_dir=args.handoff_dir
        )
    _announce(args, state, int((time.monotonic() - started) * 1000))
    return 0


def cmd_engines(args: argparse.Namespace) -> int:
    with provisioner(args) as prov:
        listed = engine_api.engines_json(prov)
    if args.json:
        emit(args, {"engines": listed})
        return 0
    rows = [("POOL", "ENGINE", "STATE", "URL", "PID", "RESTARTS", "UPTIME", "GATEWAY", "MODEL")]
    for e in listed:
        rows.append(
            (
                e["pool_id"],
                e["engine"],
                e["state"],
                e["url"],
                str(e["pid"] or "-"),
                str(e["restarts"]),
                f"{e['uptime_s']:.0f}s",
                gateway_column(e.get("gateway")),
                e["model_id"],
            )
        )
    if len(rows) > 1:
        write_table(rows)
    else:
        sys.stderr.write(f"{PROG}: no engine pools (start one with `{PROG} up REF`)\n")
    return 0


def gateway_column(model: dict[str, Any] | None) -> str:
    """A gateway pool's model as ``engines`` shows it: its name, last use and queue, or why it was unloaded."""
    if not isinstance(model, dict):
        return "-"
    name = str(model.get("model", "?"))[:40]
    unloaded = model.get("unloaded")
    if model.get("state") == "unloaded" and isinstance(unloaded, dict):
        return f"{name}: unloaded ({unloaded.get('reason')})"
    used = model.get("last_used_ms")
    since = ago(time.time() * 1000 - used) if isinstance(used, int) else "never used"
    return f"{name}: {model.get('state')}, used {since}, queue {model.get('queue_depth', 0)}"


def cmd_down(args: argparse.Namespace) -> int:
    with provisioner(args) as prov:
        if not args.all:
            stopped = [engine_api.down(prov, args.pool)]
        else:
            stopped = []
            for name in [p["pool_id"] for p in engine_api.engines_json(prov)]:
                try:  # one pool that cannot be stopped never keeps the others running
                    stopped.append(engine_api.down(prov, name))
                except ProvisionerError as exc:
                    sys.stderr.write(f"{PROG}: warning: pool {name} skipped: {redact_text(str(exc))}\n")
    emit(args, {"stopped": [s.pool_id for s in stopped]}, "\n".join(f"stopped {s.pool_id}" for s in stopped) or None)
    return 0


def cmd_engine_supervise(args: argparse.Namespace) -> int:
    """The supervisor's own process: the pool's state and its engine's variables arrive as JSON on stdin from
    ``up`` (never from a file in the cache, never on a command line)."""
    raw = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read(1 << 20)
    try:
        launch = json.loads(raw) if raw.strip() else {}
    except ValueError:
        launch = {}
    state = state_from_json(launch.get("state")) if isinstance(launch, dict) else None
    if state is None or state.pool_id != args.pool:
        raise InvalidInput(f"engine-supervise {args.pool[:80]!r}: started by `up` only (it reads the pool from stdin)")
    env = launch.get("engine_env")
    engine_env = {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {}
    settings = provisioner_settings(args)
    with ModelProvisioner(api_settings(settings) if args.api else settings) as prov:
        return supervise(prov, state, engine_env)
