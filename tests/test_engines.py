"""Engines on verified models: ``up``, ``engines``, ``down``, supervision, against a real ``llama-server``
built from the llama.cpp sources in the llama-cpp-python sdist (scripts/build_test_engines.py) and a tiny
random-weight llama GGUF with a real vocabulary."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import alive, build_test_engines
from .helpers import digest_of_file, processes_running


def stream_completion(url: str, n: int = 8) -> list[str]:
    """A streamed /completion: the text pieces of each server-sent event."""
    pieces: list[str] = []
    body = {"prompt": "Hello", "n_predict": n, "stream": True, "seed": 1, "temperature": 0}
    with httpx.stream("POST", f"{url}/completion", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event.get("content") or not event.get("stop"):
                    pieces.append(event.get("content", ""))
    return pieces


def test_the_readmes_offline_run_serves_the_shipped_example_as_printed(
    engines: Any, llama_server: str, llamacpp_sdist: Path, tmp_path: Path
) -> None:
    """The README's "Run a model" block, offline half, run as printed from the repository root (llama-server on
    PATH, as a user who installed it has it): the shipped example is verified against the digest the README
    gives, served, and streams tokens; ``down`` stops it. The example is its recipe, byte for byte."""
    import re
    import shlex

    from .conftest import ROOT
    from .servers.nginx import free_port

    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Run a model", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    up = next(line for line in lines if line.startswith("model-provisioner up examples/"))
    down = next(line for line in lines if line.startswith("model-provisioner down"))
    example = ROOT / "examples" / "tiny-runnable-llama.gguf"
    digest = re.search(r"--digest (sha256:[0-9a-f]{64})", up)
    assert digest and digest.group(1) == digest_of_file(example), "the README's digest is not the example's"
    regenerated = build_test_engines.regenerate_runnable_example(tmp_path)
    assert regenerated.read_bytes() == example.read_bytes(), "examples/make_runnable_gguf.py no longer writes it"
    port = free_port()
    env = {"PATH": f"{Path(llama_server).parent}{os.pathsep}{os.environ['PATH']}"}
    argv = [a if a != "8080" else str(port) for a in shlex.split(up, comments=True)[1:]]
    started = engines(*argv, env=env, cwd=ROOT)
    assert started.code == 0, started.stderr
    assert len(stream_completion(f"http://127.0.0.1:{port}", 8)) == 8
    stopped = engines(*shlex.split(down, comments=True)[1:], env=env, cwd=ROOT)
    assert stopped.code == 0, stopped.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_the_demo_provisions_the_example_and_what_it_prints_next_runs_as_printed(
    llama_server: str, tmp_path: Path
) -> None:
    """The README's first command: the demo provisions the shipped example offline, writes its handoff and
    prints what to run next; with llama-server on PATH that is one ``run``, which streams an answer as printed;
    without one, ``engines install llamacpp`` comes first (run as printed in test_engine_install.py's
    newcomer test, from a registry instead of a build)."""
    import shlex

    from .conftest import ROOT

    demo_dir = tmp_path / "demo"
    env = {
        **os.environ,
        "DEMO_DIR": str(demo_dir),
        "PATH": f"{Path(llama_server).parent}{os.pathsep}{os.environ['PATH']}",
    }
    demo = subprocess.run([str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, env=env, timeout=600)
    assert demo.returncode == 0, demo.stderr[-2000:]
    handoff = json.loads((demo_dir / "out" / ".runtime" / "engines" / "llamacpp.json").read_text())
    assert handoff["model"]["path"] == str(ROOT / "examples" / "tiny-runnable-llama.gguf")
    suggested = demo.stdout.split("--- next:", 1)[1].splitlines()[1:]
    assert len(suggested) == 1, "with llama-server on PATH there is nothing to install first"
    chat = subprocess.run(shlex.split(suggested[0]), capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip() and "stopped pool" in chat.stderr
    without_engine = {**env, "PATH": os.environ["PATH"]}
    listed = subprocess.run(
        [str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, env=without_engine, timeout=600
    )
    install, _ = listed.stdout.split("--- next:", 1)[1].splitlines()[1:3]
    assert shlex.split(install, comments=True)[-3:] == ["engines", "install", "llamacpp"]


def test_up_serves_a_streamed_completion_then_down_frees_the_port(
    engines: Any, llama_server: str, tiny_model: Path, tmp_path: Path
) -> None:
    started = engines(
        "up",
        str(tiny_model),
        "--binary",
        llama_server,
        "--digest",
        digest_of_file(tiny_model),
        "--handoff-dir",
        str(tmp_path),
        "--json",
    )
    assert started.code == 0, started.stderr
    pool = json.loads(started.stdout)
    assert pool["state"] == "ready" and pool["pool_id"] == "default" and pool["engine_version"]
    assert httpx.get(f"{pool['url']}/health", timeout=5).status_code == 200
    assert len(stream_completion(pool["url"], 8)) == 8  # eight tokens, streamed one event each
    # OpenAI clients see the model's id (its ref), never a path in the cache
    models = httpx.get(f"{pool['url']}/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == [f"file:{tiny_model}"], models
    handoff = json.loads((tmp_path / ".runtime" / "engines" / "llamacpp.json").read_text())
    assert handoff["model"]["path"] == str(tiny_model) and handoff["metadata"]["digest"] == digest_of_file(tiny_model)
    assert handoff["url"] == pool["url"] and handoff["pid"] == pool["pid"] and handoff["pool_id"] == "default"
    assert handoff["engine_version"] == pool["engine_version"] and handoff["state"] == "ready"
    assert "--parallel" in handoff["flags"] and "--ctx-size" in handoff["flags"]
    listed = json.loads(engines("engines", "--json").stdout)["engines"]
    assert [(e["pool_id"], e["state"]) for e in listed] == [("default", "ready")]
    # the model is leased while it is served: rm and gc leave it alone
    refused = engines("rm", f"file:{tiny_model}")
    assert refused.code == 5 and "engine pool default" in refused.stderr, refused.stderr
    assert engines("gc", "--max-size", "0").code == 0  # the budget evicts what it can, never a leased model
    assert json.loads(engines("inspect", f"file:{tiny_model}", "--json").stdout)["lifecycle"] == "Active"
    start = time.monotonic()
    stopped = engines("down", "--pool", "default")
    assert stopped.code == 0, stopped.stderr
    assert time.monotonic() - start < 6
    port = int(pool["url"].rsplit(":", 1)[1])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
    assert json.loads((tmp_path / ".runtime" / "engines" / "llamacpp.json").read_text())["state"] == "stopped"
    assert json.loads(engines("engines", "--json").stdout)["engines"][0]["state"] == "stopped"
    assert engines("rm", f"file:{tiny_model}").code == 0  # the lease went with the engine


def test_a_killed_engine_is_restarted_and_a_killed_supervisor_leaves_no_lie(
    engines: Any, llama_server: str, tiny_model: Path, tmp_path: Path
) -> None:
    pool = json.loads(
        engines("up", str(tiny_model), "--binary", llama_server, "--handoff-dir", str(tmp_path), "--json").stdout
    )
    os.kill(pool["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        now = json.loads(engines("engines", "--json").stdout)["engines"][0]
        if now["state"] == "ready" and now["pid"] != pool["pid"]:
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.2)
    assert now["restarts"] == 1 and httpx.get(f"{now['url']}/health", timeout=5).status_code == 200
    handoff = json.loads((tmp_path / ".runtime" / "engines" / "llamacpp.json").read_text())
    assert handoff["pid"] == now["pid"] and handoff["state"] == "ready"  # before: the dead engine's pid
    assert Path(now["handoff"]).is_absolute()  # before: relative to where up ran
    os.kill(now["supervisor_pid"], signal.SIGKILL)  # the engine dies with it (PR_SET_PDEATHSIG)
    deadline = time.monotonic() + 10
    while True:
        after = json.loads(engines("engines", "--json").stdout)["engines"][0]
        if after["state"] == "crashed" and not alive(now["pid"]):
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.1)


def test_a_pool_that_keeps_crashing_gives_up(
    engines: Any, llama_server: str, tiny_model: Path, settings_file: Any
) -> None:
    settings = settings_file(engines={"max_restarts": 1, "restart_window_s": 60, "restart_backoff_max_s": 0.2})
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings)}
    pool = json.loads(engines("up", str(tiny_model), "--binary", llama_server, "--json", env=env).stdout)
    pids = [pool["pid"]]
    deadline = time.monotonic() + 40
    while True:
        now = json.loads(engines("engines", "--json", env=env).stdout)["engines"][0]
        if now["state"] == "crashed":
            break
        if now["state"] == "ready" and now["pid"] not in pids:
            pids.append(now["pid"])
        if now["state"] == "ready" and alive(now["pid"]):
            os.kill(now["pid"], signal.SIGKILL)
        assert time.monotonic() < deadline, now
        time.sleep(0.1)
    assert now["restarts"] == 1 and "gave up" in (now["error"] or "") and len(pids) == 2
    assert not any(alive(pid) for pid in pids)
    assert engines("rm", f"file:{tiny_model}").code == 0  # the supervisor released its lease


def test_two_pools_a_taken_port_and_the_config_path(
    engines: Any, llama_server: str, tiny_model: Path, tmp_path: Path, cache_dir: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        first = engines("up", str(tiny_model), "--binary", llama_server, "--pool", "a", "--port", str(port))
        assert first.code == 0, first.stderr
        assert f"port {port} on 127.0.0.1 is in use" in first.stderr, first.stderr  # said so
        a = {e["pool_id"]: e for e in json.loads(engines("engines", "--json").stdout)["engines"]}["a"]
        assert a["url"] == first.stdout.strip() and not a["url"].endswith(f":{port}") and a["requested_port"] == port
    config = tmp_path / "engine.yaml"
    config.write_text(
        f"model_ref: {tiny_model}\nexpected_digest: {digest_of_file(tiny_model)}\n"
        f"engine:\n  kind: llamacpp\n  binary: {llama_server}\n  flags: ['--threads', '1', '-ngl', '0']\n"
    )
    entry = "import sys; from model_provisioner.cli import engine_main; sys.exit(engine_main())"
    second = subprocess.run(
        [sys.executable, "-c", entry, "--cache-dir", str(cache_dir), "--config", str(config), "--pool", "b", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stderr
    b = json.loads(second.stdout)
    assert b["pool_id"] == "b" and b["url"] != a["url"] and "--threads" in b["flags"]
    assert "--n-gpu-layers" in b["flags"] and "-ngl" not in b["flags"]  # legacy spellings normalised
    assert b["flags"][:5] == ["--parallel", "1", "--no-cont-batching", "--no-webui", "--metrics"]
    listed = {e["pool_id"]: e["state"] for e in json.loads(engines("engines", "--json").stdout)["engines"]}
    assert listed == {"a": "ready", "b": "ready"}
    assert len(stream_completion(b["url"], 2)) == 2 and len(stream_completion(a["url"], 2)) == 2
    assert engines("down", "--all").code == 0


def test_nothing_unverified_or_broken_reaches_a_running_engine(
    engines: Any, llama_server: str, tiny_model: Path, tmp_path: Path, cache_dir: Path
) -> None:
    wrong = engines("up", str(tiny_model), "--binary", llama_server, "--digest", "sha256:" + "0" * 64)
    assert wrong.code == 4, wrong.stderr
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(tiny_model.read_bytes()[: 1 << 16])
    assert engines("up", str(corrupt), "--binary", llama_server).code == 4
    missing = engines("up", str(tiny_model), "--binary", str(tmp_path / "no-such-llama-server"))
    assert missing.code == 2 and "no-such-llama-server" in missing.stderr, missing.stderr
    failing = engines("up", str(tiny_model), "--binary", llama_server, "--flag=--no-such-flag-at-all")
    assert failing.code == 9 and "no-such-flag-at-all" in failing.stderr, failing.stderr  # its own last words
    assert not (cache_dir / "run").exists() or all(
        json.loads(p.read_text())["state"] != "ready" for p in (cache_dir / "run").glob("*.json")
    )
    assert not any(
        Path(f"/proc/{pid}/cmdline").read_bytes().startswith(llama_server.encode())
        for pid in os.listdir("/proc")
        if pid.isdigit() and Path(f"/proc/{pid}/cmdline").exists()
    )


def test_engines_through_the_http_api(api_factory: Any, llama_server: str, tiny_model: Path) -> None:
    api = api_factory(
        settings={"api_file_roots": [str(tiny_model.parent)], "engines": {"llamacpp": {"binary": llama_server}}}
    )
    c = api.client
    refused = c.post("/v1/engines", json={"ref": f"file:{tiny_model}", "flags": ["--log-file", "/etc/x"]})
    assert refused.status_code == 403 and "--log-file" in refused.json()["error"]["message"], refused.text
    assert c.post("/v1/engines", json={"ref": f"file:{tiny_model}", "binary": "/bin/sh"}).status_code == 400
    made = c.post(
        "/v1/engines", json={"ref": f"file:{tiny_model}", "pool": "api", "flags": ["--threads", "1"]}, timeout=120
    )
    assert made.status_code == 201, made.text
    pool = made.json()
    assert pool["state"] == "ready" and httpx.get(f"{pool['url']}/health", timeout=5).status_code == 200
    assert [e["pool_id"] for e in c.get("/v1/engines").json()["engines"]] == ["api"]
    assert c.get("/v1/engines/api").json()["pid"] == pool["pid"]
    assert c.get("/v1/engines/nope").status_code == 404
    stopped = c.delete("/v1/engines/api", timeout=30)
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
    assert not alive(pool["pid"])


ADD_CONFIG = """
name: "add"
backend: "python"
max_batch_size: 0
input [ { name: "A" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "B" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""
ADD_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            out.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("SUM", (a + b).astype(np.float32))]))
        return out
"""
PIPELINE_CONFIG = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [
  { model_name: "add" model_version: -1 input_map { key: "A" value: "X" } input_map { key: "B" value: "X" }
    output_map { key: "SUM" value: "twice" } },
  { model_name: "add" model_version: -1 input_map { key: "A" value: "twice" } input_map { key: "B" value: "X" }
    output_map { key: "SUM" value: "Y" } }
] }
"""


@pytest.fixture(scope="session")
def triton() -> dict[str, str]:
    home: dict[str, str] = build_test_engines.triton_home()
    return home


def test_triton_serves_a_python_backend_repository_and_its_ensemble(
    engines: Any, triton: dict[str, str], tmp_path: Path, settings_file: Any
) -> None:
    repo = tmp_path / "model_repository"
    (repo / "add" / "1").mkdir(parents=True)
    (repo / "add" / "config.pbtxt").write_text(ADD_CONFIG)
    (repo / "add" / "1" / "model.py").write_text(ADD_MODEL)
    (repo / "pipeline" / "1").mkdir(parents=True)
    (repo / "pipeline" / "config.pbtxt").write_text(PIPELINE_CONFIG)
    env_vars = {k: triton[k] for k in ("LD_LIBRARY_PATH", "PYTHONPATH", "PATH")}
    engine_settings = {"triton": {"binary": triton["binary"], "env": env_vars}}
    # model code is remote code: refused until the operator allows it
    refused = engines(
        "up",
        str(repo),
        "--engine",
        "triton",
        "--pool",
        "tr",
        env={"MODEL_PROVISIONER_SETTINGS": str(settings_file(engines=engine_settings))},
    )
    assert refused.code == 5 and "add/1/model.py" in refused.stderr and "allow_remote_code" in refused.stderr
    settings = settings_file(engines=engine_settings, allow_remote_code=True)
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings)}
    up = engines(
        "up",
        str(repo),
        "--engine",
        "triton",
        "--pool",
        "tr",
        f"--flag=--backend-directory={triton['backend_directory']}",
        "--json",
        env=env,
        timeout=180,
    )
    assert up.code == 0, up.stderr
    pool = json.loads(up.stdout)
    assert pool["state"] == "ready" and sorted(pool["models"]) == ["add", "pipeline"]
    for name in ("add", "pipeline"):
        assert httpx.get(f"{pool['url']}/v2/models/{name}/ready", timeout=5).status_code == 200
    answer = httpx.post(
        f"{pool['url']}/v2/models/pipeline/infer",
        timeout=30,
        json={"inputs": [{"name": "X", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [3.0, 6.0, 9.0, 12.0]  # (x + x) + x
    assert engines("down", "--pool", "tr", env=env).code == 0
    # a model whose code fails to load: an error naming it, nothing left running
    (repo / "add" / "1" / "model.py").write_text("raise RuntimeError('this model cannot load')\n")
    broken = engines(
        "up",
        str(repo),
        "--engine",
        "triton",
        "--pool",
        "tr2",
        f"--flag=--backend-directory={triton['backend_directory']}",
        env=env,
        timeout=180,
    )
    assert broken.code == 9 and "add (" in broken.stderr and "this model cannot load" in broken.stderr, broken.stderr
    # a failed up leaves no pool behind (docs/engines.md, "Pools"): no state, no process; its log stays
    assert not (repo.parent / "cache" / "run" / "tr2.json").exists()
    assert "tr2" not in engines("engines", "--json", env=env).stdout
    assert (repo.parent / "cache" / "run" / "tr2.engine.log").exists()
    assert processes_running(str(repo)) == []
