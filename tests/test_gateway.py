"""The OpenAI-compatible endpoint of ``serve`` (issue 25; docs/engines.md, "One endpoint for every model"): real
llama-server processes on tiny models, called by OpenAI's own client library.

Engines are counted from the process table (the command lines of this machine's llama-server processes), and
the gateway's decisions (loads, unloads and their reasons) read from its own ``GET /v1/engines`` and metrics."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from model_provisioner.config.engines import LlamaCppSettings
from model_provisioner.engines.admission import file_estimate

from .conftest import TOKEN, build_test_engines, run_cli
from .helpers import wait_for
from .servers.nginx import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three runnable models of the example's shape (different weights: three models, three digests) and three of
    other shapes (grouped-query attention, untied output, a longer trained context) for the memory estimate."""
    from make_runnable_gguf import write_runnable_gguf

    directory = tmp_path_factory.mktemp("gateway-models")
    vocab = build_test_engines.test_vocab(directory)
    out = {
        name: write_runnable_gguf(vocab, directory / f"{name}.gguf", seed=i, tied=True) for i, name in enumerate("abc")
    }
    out["gqa"] = write_runnable_gguf(
        vocab, directory / "gqa.gguf", width=128, layers=4, heads=8, kv_heads=2, context=4096
    )
    out["wide"] = write_runnable_gguf(vocab, directory / "wide.gguf", width=256, layers=3, context=2048)
    out["deep"] = write_runnable_gguf(
        vocab, directory / "deep.gguf", width=96, layers=6, heads=6, kv_heads=3, context=1024
    )
    return out


class EngineCounter:
    """Samples the process table while it runs: the most llama-server processes at once, and per model."""

    def __init__(self, binary: str, models: dict[str, Path]) -> None:
        self.binary, self.models = binary, models
        self.most = 0
        self.most_per_model: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def now(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in Path("/proc").iterdir():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
            except OSError:
                continue
            if argv and argv[0].decode() == self.binary:
                for name, path in self.models.items():
                    if str(path).encode() in argv:
                        counts[name] = counts.get(name, 0) + 1
        return counts

    def run(self) -> None:
        while not self.stop.is_set():
            counts = self.now()
            self.most = max(self.most, sum(counts.values()))
            for name, n in counts.items():
                self.most_per_model[name] = max(self.most_per_model.get(name, 0), n)
            self.stop.wait(0.005)

    def __enter__(self) -> EngineCounter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def gateway_api(api_factory: Any, llama_server: str, models: dict[str, Path], **gateway: Any) -> Any:
    aliases = [{"alias": name, "ref": str(models[name]), "flags": ["--threads", "1"]} for name in "abc"]
    settings = {
        "api_file_roots": [str(models["a"].parent)],
        "engines": {"llamacpp": {"binary": llama_server}},
        "gateway": {"memory_reserve": 0, **gateway},
        "models": aliases,
    }
    return api_factory(settings=settings)


def client(api: Any, key: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0, timeout=120)


def slots(api: Any) -> dict[str, dict[str, Any]]:
    return {slot["model"]: slot for slot in api.client.get("/v1/engines").json()["gateway"]}


def metric(api: Any, line_start: str) -> float:
    for line in api.client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def engines_stopped(cache_dir: Path) -> Iterator[None]:
    yield
    run_cli("-q", "down", "--all", cache_dir=cache_dir, timeout=60)


def test_openai_clients_chat_through_one_endpoint(api_factory: Any, llama_server: str, models: dict[str, Path]) -> None:
    api = gateway_api(api_factory, llama_server, models)
    oai = client(api)
    assert slots(api) == {} and EngineCounter(llama_server, models).now() == {}
    # loaded on first use, and answered
    answer = oai.chat.completions.create(model="a", messages=HELLO, max_tokens=8)
    assert answer.choices[0].message.content and answer.usage and answer.usage.completion_tokens == 8
    assert slots(api)["a"]["state"] == "ready" and EngineCounter(llama_server, models).now() == {"a": 1}
    # streamed: the deltas arrive as events, the last one says why it stopped
    events = list(oai.chat.completions.create(model="a", messages=HELLO, max_tokens=16, stream=True))
    assert len(events) > 2 and events[-1].choices[0].finish_reason == "length"
    assert "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    completion = oai.completions.create(model="a", prompt="Once upon", max_tokens=4)
    assert completion.choices[0].text and completion.usage and completion.usage.completion_tokens == 4
    # the catalog id of a loaded model names the same engine (never two engines for one model)
    model_id = f"file:{models['a']}"
    oai.chat.completions.create(model=model_id, messages=HELLO, max_tokens=2)
    assert EngineCounter(llama_server, models).now() == {"a": 1}
    listed = {m.id: m.model_extra.get("status") for m in oai.models.list().data if m.model_extra}
    assert listed["a"] == "loaded" and listed["b"] == "unloaded" and listed[model_id] == "loaded"
    # an unknown name is a 404 naming it, not a file in the server's directory
    with pytest.raises(openai.NotFoundError, match="nope"):
        oai.chat.completions.create(model="nope", messages=HELLO, max_tokens=2)
    # the API token on every route
    with pytest.raises(openai.AuthenticationError):
        client(api, key="wrong").chat.completions.create(model="a", messages=HELLO, max_tokens=2)
    bare = httpx.Client(base_url=api.url, timeout=30)
    for method, path in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/models/load"),
        ("POST", "/v1/models/unload"),
        ("GET", "/v1/engines"),
    ]:
        assert bare.request(method, path, json={"model": "a", "prompt": "x"}).status_code == 401, path
    # per-model metrics, prefixed like the rest (and the two that were not)
    assert metric(api, 'model_provisioner_gateway_load_duration_seconds_count{model="a"}') == 1
    assert metric(api, 'model_provisioner_gateway_time_to_first_token_seconds_count{model="a"}') >= 3
    assert metric(api, 'model_provisioner_gateway_generated_tokens_per_second_count{model="a"}') >= 3
    assert metric(api, "model_provisioner_gateway_loaded_models") == 1
    assert (
        'model_provisioner_catalog_verifications_total{reason="recorded",result="warn"}'
        in api.client.get("/metrics").text
    )
    # the server's engines stop with it
    api.proc.terminate()
    api.proc.wait(30)
    assert EngineCounter(llama_server, models).now() == {}


def test_concurrent_first_requests_start_one_engine(
    api_factory: Any, llama_server: str, models: dict[str, Path]
) -> None:
    api = gateway_api(api_factory, llama_server, models)
    oai = client(api)
    with EngineCounter(llama_server, models) as counter, ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: oai.chat.completions.create(model="b", messages=HELLO, max_tokens=4), range(8))
        )
    assert all(a.choices[0].message.content for a in answers)
    assert counter.most_per_model == {"b": 1}
    assert metric(api, 'model_provisioner_gateway_load_duration_seconds_count{model="b"}') == 1


def test_idle_unload_lru_eviction_and_explicit_unload(
    api_factory: Any, llama_server: str, models: dict[str, Path], cache_dir: Path
) -> None:
    api = gateway_api(api_factory, llama_server, models, max_loaded=2)
    oai = client(api)
    # keep_alive 0 (as Ollama's): unloaded as soon as the request ends
    oai.chat.completions.create(model="a", messages=HELLO, max_tokens=2, extra_body={"keep_alive": 0})
    unloaded = wait_for(lambda: slots(api)["a"].get("unloaded"), 60, "a to be unloaded")
    assert unloaded["reason"] == "idle" and EngineCounter(llama_server, models).now() == {}
    # three models, two at most: the least recently used one makes room
    with EngineCounter(llama_server, models) as counter:
        for name in "abc":
            oai.chat.completions.create(model=name, messages=HELLO, max_tokens=2)
    assert counter.most <= 2 and max(counter.most_per_model.values()) == 1
    seen = slots(api)
    assert seen["a"]["unloaded"]["reason"] == "evicted"
    assert seen["b"]["state"] == seen["c"]["state"] == "ready"
    assert EngineCounter(llama_server, models).now() == {"b": 1, "c": 1}
    # the CLI sees what the gateway decided, from its record
    listed = {e["pool_id"]: e for e in run_cli("engines", "--json", cache_dir=cache_dir).json()["engines"]}
    assert listed[seen["a"]["pool_id"]]["gateway"]["unloaded"]["reason"] == "evicted"
    assert listed[seen["b"]["pool_id"]]["gateway"]["state"] == "ready"
    table = run_cli("engines", cache_dir=cache_dir).stdout
    assert "a: unloaded (evicted)" in table and "b: ready, used " in table
    # by hand
    answer = api.client.post("/v1/models/unload", json={"model": "b"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["unloaded"]["reason"] == "requested"
    assert EngineCounter(llama_server, models).now() == {"c": 1}
    assert metric(api, 'model_provisioner_gateway_unloads_total{model="a",reason="evicted"}') == 1
    assert metric(api, 'model_provisioner_gateway_unloads_total{model="a",reason="idle"}') == 1
    loaded = api.client.post("/v1/models/load", json={"model": "b"}, timeout=60)
    assert loaded.status_code == 200 and loaded.json()["state"] == "ready"


def estimate_of(cache_dir: Path, model: Path, env: dict[str, str] | None = None) -> dict[str, int]:
    shown = run_cli("inspect", "--json", str(model), cache_dir=cache_dir, env=env)
    memory: dict[str, int] = json.loads(shown.stdout)["memory"]
    return memory


def test_memory_admission_evicts_idle_models_and_refuses_what_cannot_fit(
    api_factory: Any, llama_server: str, models: dict[str, Path], cache_dir: Path
) -> None:
    need = estimate_of(cache_dir, models["a"])["total_bytes"]
    # room for one of these models, not two
    api = gateway_api(api_factory, llama_server, models, memory_limit=int(need * 1.5))
    oai = client(api)
    oai.chat.completions.create(model="a", messages=HELLO, max_tokens=2)
    oai.chat.completions.create(model="b", messages=HELLO, max_tokens=2)  # a is idle: unloaded for b
    assert slots(api)["a"]["unloaded"]["reason"] == "evicted"
    assert EngineCounter(llama_server, models).now() == {"b": 1}
    # b busy (its engine paused mid-request): c cannot have its memory
    engine_pid = api.client.get("/v1/engines").json()["engines"]
    pid = next(e["pid"] for e in engine_pid if e["model_path"] == str(models["b"]) and e["state"] == "ready")
    os.kill(pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(lambda: oai.chat.completions.create(model="b", messages=HELLO, max_tokens=2))
            wait_for(lambda: slots(api)["b"]["in_flight"] == 1, 30, "b's request to reach its engine")
            refused = api.client.post("/v1/chat/completions", json={"model": "c", "messages": HELLO})
            os.kill(pid, signal.SIGCONT)
            assert held.result().choices[0].message.content
    finally:
        os.kill(pid, signal.SIGCONT)
    assert refused.status_code == 507, refused.text
    message = refused.json()["error"]["message"]
    assert "'c' needs ~" in message and "free for it" in message and "memory_limit" in message
    assert "c" not in EngineCounter(llama_server, models).now()


def test_nothing_fits_under_the_reserve(api_factory: Any, llama_server: str, models: dict[str, Path]) -> None:
    api = gateway_api(api_factory, llama_server, models, memory_reserve="100TiB")
    refused = api.client.post("/v1/chat/completions", json={"model": "a", "messages": HELLO})
    assert refused.status_code == 507 and "reserve 100.0 TiB" in refused.json()["error"]["message"], refused.text
    assert EngineCounter(llama_server, models).now() == {}


def test_a_model_that_fails_verification_never_starts(
    api_factory: Any, llama_server: str, models: dict[str, Path], cache_dir: Path
) -> None:
    wrong = "sha256:" + "0" * 64
    settings = {
        "api_file_roots": [str(models["a"].parent)],
        "engines": {"llamacpp": {"binary": llama_server}},
        "gateway": {"memory_reserve": 0, "load_backoff": "10m"},
        "models": [{"alias": "pinned", "ref": str(models["a"]), "digest": wrong}],
    }
    api = api_factory(settings=settings)
    first = api.client.post("/v1/chat/completions", json={"model": "pinned", "messages": HELLO})
    assert first.status_code == 422 and "digest" in first.json()["error"]["message"], first.text
    # within the back-off the same answer, without another attempt, and when to come back
    again = api.client.post("/v1/chat/completions", json={"model": "pinned", "messages": HELLO})
    assert again.status_code == 422 and int(again.headers["Retry-After"]) > 60
    assert metric(api, 'model_provisioner_gateway_unloads_total{model="pinned",reason="failed"}') == 1
    assert slots(api)["pinned"]["unloaded"]["reason"] == "failed"
    assert EngineCounter(llama_server, models).now() == {}
    assert not (cache_dir / "run").exists() or not list((cache_dir / "run").glob("gw-*.json"))


def test_a_client_that_goes_away_frees_the_engine(api_factory: Any, llama_server: str, models: dict[str, Path]) -> None:
    settings = {
        "api_file_roots": [str(models["a"].parent)],
        "engines": {"llamacpp": {"binary": llama_server}},
        "gateway": {"memory_reserve": 0},
        "models": [{"alias": "long", "ref": str(models["gqa"]), "flags": ["--ctx-size", "4096"]}],
    }
    api = api_factory(settings=settings)
    asked = 4000
    body = {"model": "long", "messages": HELLO, "max_tokens": asked, "stream": True}
    with api.client.stream("POST", "/v1/chat/completions", json=body) as streamed:
        assert streamed.status_code == 200
        first = next(streamed.iter_lines())
        assert first.startswith("data: ")
    # the connection is closed: the gateway's hold ends, and the engine stops generating
    wait_for(lambda: slots(api)["long"]["in_flight"] == 0, 30, "the request to end at the gateway")
    url = slots(api)["long"]["url"]

    def engine_idle() -> bool:
        return not any(s["is_processing"] for s in httpx.get(f"{url}/slots", timeout=10).json())

    wait_for(engine_idle, 60, "the engine's slot to be free")
    predicted = httpx.get(f"{url}/metrics", timeout=10).text
    generated = next(
        float(line.split()[1]) for line in predicted.splitlines() if line.startswith("llamacpp:tokens_predicted_total")
    )
    assert 0 < generated < asked  # cut short, not run to the end for nobody
    answer = client(api).chat.completions.create(model="long", messages=HELLO, max_tokens=2)
    assert answer.choices[0].message.content


BUFFER_RE = r"(CPU_Mapped model|CPU KV|CPU compute|CPU +output) buffer size = +([0-9.]+) MiB"


def four_buffers(engine: Any, log: Path) -> list[tuple[str, str]]:
    assert engine.poll() is None, log.read_text()[-2000:]
    found = re.findall(BUFFER_RE, log.read_text())
    return found if len(found) >= 4 else []


@pytest.mark.parametrize("name", ["a", "gqa", "wide", "deep"])
def test_the_memory_estimate_is_within_15_percent_of_what_llama_server_reports(
    name: str, llama_server: str, models: dict[str, Path], cache_dir: Path, tmp_path: Path
) -> None:
    """``inspect``'s estimate at the context ``up`` runs the model with, against the buffers llama-server itself
    reports at that context (its ``-lv 4`` start-up lines); then again at a context four times larger."""

    memory = estimate_of(cache_dir, models[name])
    shown = run_cli("inspect", str(models[name]), cache_dir=cache_dir).stdout
    assert "needs ~" in shown and f"at ctx {memory['ctx']}" in shown
    bigger = memory["ctx"] * 4  # past what the model was trained for: llama-server still allocates it
    wider = file_estimate(models[name], name, 0, ["--ctx-size", str(bigger)], LlamaCppSettings())
    assert wider is not None
    for ctx, expected in ((memory["ctx"], memory["total_bytes"]), (bigger, wider.total)):
        log = tmp_path / f"{name}-{ctx}.log"
        with open(log, "w") as out:
            argv = [llama_server, "-m", str(models[name]), "--ctx-size", str(ctx), "--parallel", "1"]
            argv += ["--no-cont-batching", "--threads", "1", "--port", str(free_port()), "-lv", "4"]
            engine = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            found = wait_for(partial(four_buffers, engine, log), 60, "llama-server to report its buffers")
        finally:
            engine.kill()
            engine.wait()
        reported = {kind: float(mib) for kind, mib in found}
        total = sum(reported.values()) * 2**20
        assert abs(expected - total) <= 0.15 * total, (name, ctx, expected, total, reported)


def test_the_readme_client_streams_from_the_readme_gateway(api_factory: Any, llama_server: str, tmp_path: Path) -> None:
    """The README's settings and its OpenAI client, as printed (the port is the test's, paths from the repository,
    the engine the suite's)."""
    import yaml

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### One endpoint for every model") :]
    settings = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    settings["api_file_roots"] = [str(ROOT / r) for r in settings["api_file_roots"]]
    for model in settings["models"]:
        model["ref"] = str(ROOT / model["ref"])
    api = api_factory(settings={**settings, "engines": {"llamacpp": {"binary": llama_server}}}, token=None)
    script = tmp_path / "client.py"
    script.write_text(snippet.replace("http://127.0.0.1:8077", api.url))
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr


def test_a_full_queue_is_503_with_retry_after_and_bad_requests_are_400(
    api_factory: Any, llama_server: str, models: dict[str, Path]
) -> None:
    api = gateway_api(api_factory, llama_server, models, max_queue=2)
    oai = client(api)
    oai.chat.completions.create(model="a", messages=HELLO, max_tokens=2)
    pid = next(e["pid"] for e in api.client.get("/v1/engines").json()["engines"] if e["state"] == "ready")
    os.kill(pid, signal.SIGSTOP)  # the engine holds every request it gets
    try:
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(lambda: oai.chat.completions.create(model="a", messages=HELLO, max_tokens=2))]
            held.append(pool.submit(lambda: oai.chat.completions.create(model="a", messages=HELLO, max_tokens=2)))
            wait_for(lambda: slots(api)["a"]["in_flight"] == 2, 30, "two requests at the engine")
            full = api.client.post("/v1/chat/completions", json={"model": "a", "messages": HELLO})
            os.kill(pid, signal.SIGCONT)
            assert all(h.result().choices[0].message.content for h in held)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert full.status_code == 503 and "gateway.max_queue" in full.json()["error"]["message"], full.text
    assert int(full.headers["Retry-After"]) >= 1
    # what a caller sends is validated before anything is loaded
    post = api.client.post
    assert post("/v1/chat/completions", content=b"not json").status_code == 400
    assert post("/v1/chat/completions", json=["a"]).status_code == 400
    assert post("/v1/chat/completions", json={"model": 7, "messages": HELLO}).status_code == 400
    huge = post("/v1/chat/completions", json={"model": "m" * 5000, "messages": HELLO})
    assert huge.status_code == 400 and len(huge.json()["error"]["message"]) < 300
    bad_keep = post("/v1/chat/completions", json={"model": "a", "messages": HELLO, "keep_alive": "soon"})
    assert bad_keep.status_code == 400 and "keep_alive" in bad_keep.json()["error"]["message"]
    assert post("/v1/models/load", json={"model": "a", "extra": 1}).status_code == 400


def test_an_engine_stopped_behind_the_gateways_back_is_loaded_again(
    api_factory: Any, llama_server: str, models: dict[str, Path], cache_dir: Path
) -> None:
    api = gateway_api(api_factory, llama_server, models)
    oai = client(api)
    oai.chat.completions.create(model="a", messages=HELLO, max_tokens=2)
    pool = slots(api)["a"]["pool_id"]
    run_cli("down", "--pool", pool, cache_dir=cache_dir)
    gone = wait_for(lambda: slots(api)["a"].get("unloaded"), 30, "the gateway to notice")
    assert gone["reason"] == "crashed"
    answer = oai.chat.completions.create(model="a", messages=HELLO, max_tokens=2)
    assert answer.choices[0].message.content and EngineCounter(llama_server, models).now() == {"a": 1}


def test_embeddings_from_a_model_started_for_them(api_factory: Any, llama_server: str, models: dict[str, Path]) -> None:
    settings = {
        "api_file_roots": [str(models["a"].parent)],
        "engines": {"llamacpp": {"binary": llama_server}},
        "gateway": {"memory_reserve": 0},
        "models": [{"alias": "embed", "ref": str(models["a"]), "flags": ["--embeddings", "--pooling", "mean"]}],
    }
    api = api_factory(settings=settings)
    vectors = client(api).embeddings.create(model="embed", input=["Hello", "Once upon a time"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 64  # the model's width
