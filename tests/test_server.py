"""The HTTP control plane, against the real server (`model-provisioner serve`, uvicorn) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import EXAMPLE_GGUF, FAST_TRANSFER, TOKEN, run_cli
from .helpers import MiB
from .servers.fileserver import Fault
from .servers.nginx import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_openapi_document_is_current_and_has_examples(api_factory: Any) -> None:
    api = api_factory()
    live = api.client.get("/openapi.json").json()
    shipped = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert live == shipped, "docs/openapi.json is stale: run `model-provisioner serve --openapi > docs/openapi.json`"
    for path, operations in live["paths"].items():
        for method, op in operations.items():
            has_response_example = any(
                "example" in c or "examples" in c
                for r in op["responses"].values()
                for c in r.get("content", {}).values()
            )
            assert has_response_example, f"{method} {path} has no response example"
            if "requestBody" in op:
                assert op["requestBody"]["content"]["application/json"].get("examples"), f"{method} {path}"


def test_every_success_response_has_a_schema(api_factory: Any) -> None:
    """docs/openapi.json documents what each route answers, field by field (not only an example)."""
    spec = json.loads((ROOT / "docs" / "openapi.json").read_text())
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for status, response in op["responses"].items():
                content = response.get("content", {}).get("application/json")
                if content is None or "text/plain" in response["content"] or status == "422":
                    continue  # the metrics are text; 422 is FastAPI's own validation body (we answer 400)
                assert content.get("schema", {}).get("$ref"), f"{method} {path} {status} has no response schema"
    entry = spec["components"]["schemas"]["EntryOut"]["properties"]
    assert {"id", "digest", "lifecycle", "expected_digest", "verifications"} <= set(entry)


def test_inspect_json_and_get_model_are_the_same_object(api_factory: Any, cache_dir: Path, tmp_path: Path) -> None:
    from make_tiny_gguf import write_tiny_gguf

    root = tmp_path / "models"
    root.mkdir()
    model = write_tiny_gguf(root / "m.gguf")
    api = api_factory(settings={"api_file_roots": [str(root)]})
    made = api.client.post("/v1/models/ensure", json={"ref": f"file:{model}"})
    assert made.status_code == 200, made.text
    over_http = api.client.get(f"/v1/models/file:{model}").json()
    on_cli = run_cli("inspect", f"file:{model}", "--json", cache_dir=cache_dir).json()
    assert over_http == on_cli
    assert on_cli["verifications"] and on_cli["lifecycle"] == "Active" and on_cli["ref"] == f"file:{model}"


def test_every_endpoint_end_to_end(api_factory: Any, hub: Any, tmp_path: Path) -> None:
    from make_tiny_gguf import write_tiny_gguf

    data = write_tiny_gguf(tmp_path / "m.gguf").read_bytes()
    hub.add_repo("org/api", {"m-Q4_K_M.gguf": data})
    api = api_factory(env={"HF_ENDPOINT": hub.url})
    c = api.client
    ensured = c.post("/v1/models/ensure", json={"ref": "hf:org/api:q4_k_m", "engine": "llamacpp"})
    assert ensured.status_code == 200, ensured.text
    model = ensured.json()
    assert model["id"] == "hf:org/api:Q4_K_M" and model["engine"] == "llamacpp" and model["metadata"]["ctx_max"]
    listing = c.get("/v1/models").json()
    assert [m["id"] for m in listing["models"]] == [model["id"]] and listing["disk_bytes"] == len(data)
    assert c.get(f"/v1/models/{model['id']}").json()["digest"] == model["digest"]
    assert c.get("/v1/models/hf:org/none/x.gguf").status_code == 404
    assert c.post(f"/v1/models/{model['id']}/verify").json()["ok"] is True
    lease = c.post(f"/v1/models/{model['id']}/leases", json={"holder": "vllm-1", "ttl_s": 60})
    assert lease.status_code == 201
    refused = c.delete(f"/v1/models/{model['id']}")
    assert refused.status_code == 409 and "vllm-1" in refused.json()["error"]["message"]
    assert c.delete(f"/v1/leases/{lease.json()['lease_id']}").status_code == 200
    assert c.delete(f"/v1/leases/{lease.json()['lease_id']}").status_code == 404
    assert c.post("/v1/gc", json={"dry_run": True}).json()["dry_run"] is True
    assert c.delete(f"/v1/models/{model['id']}").json()["removed"] == [model["id"]]
    assert c.get("/healthz").json() == {"status": "ok"} and c.get("/readyz").json() == {"status": "ready"}
    assert c.get("/v1/jobs/nope").status_code == 404


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"ref": "hf:org"}, 400, "invalid_ref"),
        ({"ref": "ftp://x/y"}, 400, "invalid_ref"),
        ({"nope": 1}, 400, "invalid_input"),
        ({"ref": "https://127.0.0.1:1/m.gguf", "expected_digest": "sha256:zz"}, 400, "invalid_digest"),
        ({"ref": "s3://Bad_Bucket/key.gguf"}, 400, "invalid_ref"),
    ],
)
def test_errors_are_json_with_the_matching_status(
    api_factory: Any, payload: dict[str, Any], status: int, code: str
) -> None:
    response = api_factory().client.post("/v1/models/ensure", json=payload)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code and response.json()["error"]["message"]


def test_status_codes_for_verification_transfer_and_not_found(api_factory: Any, fileserver: Any) -> None:
    data = os.urandom(MiB)
    url = fileserver.put("c.bin", data)
    fileserver.put("missing-later.bin", b"")
    c = api_factory().client
    wrong = c.post("/v1/models/ensure", json={"ref": url, "expected_digest": "sha256:" + "0" * 64})
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "verification_failed"
    assert c.post("/v1/models/ensure", json={"ref": f"{fileserver.url}/absent.bin"}).status_code == 404
    fileserver.faults["/boom.bin"] = Fault(statuses=[500] * 20)
    fileserver.put("boom.bin", b"x")
    failed = c.post("/v1/models/ensure", json={"ref": f"{fileserver.url}/boom.bin"})
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "transfer_failed"


def test_job_progress_then_result(api_factory: Any, fileserver: Any) -> None:
    data = os.urandom(6 * MiB)
    url = fileserver.put("slow.bin", data)
    fileserver.faults["/slow.bin"] = Fault(stall_after=2 * MiB, stall_s=1.5, times=1)
    c = api_factory(settings={"transfer": {**FAST_TRANSFER, "stall_timeout_s": 1.0}}).client
    accepted = c.post("/v1/models/ensure", params={"wait": "false"}, json={"ref": url})
    assert accepted.status_code == 202 and accepted.headers["Location"].startswith("/v1/jobs/")
    seen_progress = False
    deadline = time.monotonic() + 60
    while True:
        job = c.get(accepted.headers["Location"]).json()
        if job["state"] == "running" and job["progress"]["bytes_done"] > 0:
            seen_progress = True
        if job["state"] in ("succeeded", "failed"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert job["state"] == "succeeded", job
    assert seen_progress and job["result"]["size_bytes"] == len(data)


def test_twenty_concurrent_ensures_share_one_fetch(api_factory: Any, fileserver: Any) -> None:
    data = os.urandom(8 * MiB)
    url = fileserver.put("shared.bin", data)
    c = api_factory().client
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: c.post("/v1/models/ensure", json={"ref": url}), range(20)))
    assert all(r.status_code == 200 for r in results)
    assert len({r.json()["digest"] for r in results}) == 1
    assert fileserver.served("shared.bin") == len(data)


def test_auth_required_accepted_refused(api_factory: Any) -> None:
    api = api_factory()
    bare = httpx.Client(base_url=api.url)
    assert bare.get("/v1/models").status_code == 401
    assert bare.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    for spelling in ("bearer", "BEARER", "Bearer "):  # the scheme is case-insensitive (RFC 9110), the token is not
        assert bare.get("/v1/models", headers={"Authorization": f"{spelling} {TOKEN}"}).status_code == 200
    assert bare.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN.upper()}x"}).status_code == 401
    assert bare.get("/v1/models", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert bare.get("/healthz").status_code == 200  # probes stay open
    assert api.client.get("/v1/models").status_code == 200
    assert TOKEN not in api.logs()


def test_non_loopback_bind_needs_a_token(cache_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MODEL_PROVISIONER_API_TOKEN"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "model_provisioner",
            "--cache-dir",
            str(cache_dir),
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2 and "without a token" in result.stderr


def test_file_refs_only_under_allowed_roots(api_factory: Any, tmp_path: Path) -> None:
    allowed = tmp_path / "models"
    allowed.mkdir()
    shutil.copy(EXAMPLE_GGUF, allowed / "ok.gguf")
    outside = tmp_path / "secret.gguf"
    shutil.copy(EXAMPLE_GGUF, outside)
    (allowed / "escape.gguf").symlink_to(outside)
    c = api_factory(settings={"api_file_roots": [str(allowed)]}).client
    assert c.post("/v1/models/ensure", json={"ref": str(allowed / "ok.gguf")}).status_code == 200
    for ref in (
        str(outside),
        f"file:{outside}",
        str(allowed / "escape.gguf"),
        f"{allowed}/../secret.gguf",
        "/etc/passwd",
    ):
        denied = c.post("/v1/models/ensure", json={"ref": ref})
        assert denied.status_code == 403, (ref, denied.text)
    assert c.get("/v1/models").json()["models"][0]["id"] == f"file:{allowed / 'ok.gguf'}"


def test_correlation_id_end_to_end(api_factory: Any, tmp_path: Path, fileserver: Any) -> None:
    url = fileserver.put("corr.gguf", EXAMPLE_GGUF.read_bytes())
    handoff = tmp_path / "handoff"
    api = api_factory(settings={"api_handoff_dir": str(handoff), "policy": {"label": "team-a"}})
    response = api.client.post(
        "/v1/models/ensure", json={"ref": url, "engine": "llamacpp"}, headers={"X-Correlation-Id": "req-12345"}
    )
    assert response.status_code == 200 and response.headers["X-Correlation-Id"] == "req-12345"
    generated = api.client.get("/v1/models").headers["X-Correlation-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    provenance = json.loads((handoff / ".runtime/provenance/models.jsonl").read_text().splitlines()[-1])
    assert provenance["correlation_id"] == "req-12345" and provenance["policy_label"] == "team-a"
    audit = [json.loads(line) for line in api.logs().splitlines() if line.startswith("{")]
    ensure_lines = [a for a in audit if a.get("message") == "ensure" and a.get("correlation_id") == "req-12345"]
    assert ensure_lines, api.logs()
    for field in ("model_id", "model_ref", "digest", "bytes", "duration_ms", "policy_label", "correlation_id"):
        assert field in ensure_lines[0]


def test_metrics_values_and_naming(api_factory: Any, fileserver: Any, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    data = os.urandom(MiB)
    url = fileserver.put("metered.bin", data)
    c = api_factory().client
    assert c.post("/v1/models/ensure", json={"ref": url}).status_code == 200
    assert c.post("/v1/models/ensure", json={"ref": url}).status_code == 200  # cached
    assert c.post(
        "/v1/models/ensure", json={"ref": url + "x", "expected_digest": "sha256:" + "1" * 64}
    ).status_code in (404, 422)
    text = c.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("catalog_verifications_total", (("reason", "recorded"), ("result", "warn")))] == 1
    assert samples[("model_provisioner_fetched_bytes_total", (("scheme", "https"),))] == len(data)
    assert samples[("model_state", (("lifecycle", "Active"),))] == 1
    assert samples[("model_provisioner_cache_bytes", (("kind", "used"),))] == len(data)
    assert samples[("model_provisioner_fetches_in_flight", ())] == 0
    fetched = ("model_provisioner_ensure_duration_seconds_count", (("outcome", "fetched"), ("scheme", "https")))
    assert samples[fetched] == 1
    cached = ("model_provisioner_ensure_duration_seconds_count", (("outcome", "cached"), ("scheme", "https")))
    assert samples[cached] == 1
    # promtool-style naming rules
    for family in families.values():
        assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", family.name)
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples)
        if "seconds" in family.name or "bytes" in family.name:
            assert family.name.endswith(("_seconds", "_bytes")), family.name
        for sample in family.samples:
            assert all(re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", label) for label in sample.labels)


def test_cli_metrics_textfile(tmp_path: Path, cache_dir: Path, gguf_file: Path) -> None:
    textfile = tmp_path / "mprov.prom"
    settings = tmp_path / "s.json"
    settings.write_text(json.dumps({"metrics_textfile": str(textfile)}))
    result = run_cli("ensure", str(gguf_file), cache_dir=cache_dir, env={"MODEL_PROVISIONER_SETTINGS": str(settings)})
    assert result.code == 0, result.stderr
    text = textfile.read_text()
    assert 'catalog_verifications_total{reason="recorded",result="warn"} 1.0' in text
    assert 'model_state{lifecycle="Active"} 1.0' in text


def test_schemathesis_finds_no_server_errors(api_factory: Any, tmp_path: Path) -> None:
    """Property-based requests from our own OpenAPI document: nothing may answer 5xx. The server is offline (so
    random refs cannot reach the network) and has no file roots."""
    api = api_factory(settings={"offline": True})
    st = shutil.which("st") or str(Path(sys.executable).parent / "st")
    result = subprocess.run(
        [
            st,
            "run",
            f"{api.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "15",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--exclude-path",
            "/metrics",
            "--request-timeout",
            "30",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_push_through_the_api(api_factory: Any, registry: Any, make_gguf: Any) -> None:
    from .servers.oci_push import push_artifact, sha

    data = Path(make_gguf("api-push.gguf")).read_bytes()
    push_artifact(
        registry.url,
        "api/src",
        "v1",
        [(data, "application/vnd.cncf.model.weight.v1.raw", {"org.cncf.model.filepath": "m.gguf"})],
    )
    c = api_factory().client
    src = f"oci://{registry.host}/api/src:v1"
    assert c.post("/v1/models/ensure", json={"ref": src}).status_code == 200
    pushed = c.post(f"/v1/models/{src}/push", json={"destination": f"oci://{registry.host}/api/mirror/"})
    assert pushed.status_code == 200, pushed.text
    body = pushed.json()
    assert body["digest"] == sha(data) and body["destination"].startswith(f"oci://{registry.host}/api/mirror/")
    missing = c.post("/v1/models/hf:org/none/x.gguf/push", json={"destination": f"oci://{registry.host}/x:v1"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


# ------------------------------------------------------------------- 7. the server says what it does
def test_serve_announces_itself_logs_every_request_and_names_a_busy_port(
    api_factory: Any, tmp_path: Path, cache_dir: Path
) -> None:
    import socket

    from .conftest import TOKEN

    api = api_factory()
    assert api.client.get("/healthz").status_code == 200
    denied = api.client.get("/v1/models", headers={"Authorization": "Bearer wrong-token-value"})
    assert denied.status_code == 401
    outside = api.client.post("/v1/models/ensure", json={"ref": "/etc/passwd"})
    assert outside.status_code == 403
    logs = api.logs()
    port = api.url.rsplit(":", 1)[1]
    assert f"http://127.0.0.1:{port}" in logs.splitlines()[0] or any(
        f"http://127.0.0.1:{port}" in line and "serving" in line for line in logs.splitlines()
    )
    requests = [json.loads(line) for line in logs.splitlines() if line.startswith("{") and '"request"' in line]
    seen = {(r["method"], r["path"], r["status"]) for r in requests}
    assert ("GET", "/v1/models", 401) in seen and ("POST", "/v1/models/ensure", 403) in seen, requests
    assert all("duration_ms" in r and r.get("correlation_id") for r in requests)
    assert TOKEN not in logs and "wrong-token-value" not in logs
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        result = run_cli(
            "serve", "--port", str(taken), cache_dir=cache_dir, timeout=30, env={"MODEL_PROVISIONER_API_TOKEN": TOKEN}
        )
    assert result.code == 2 and str(taken) in result.stderr and "in use" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------ 8. request bodies are checked like the CLI
def test_api_bodies_refuse_unknown_fields_and_speak_in_fields(api_factory: Any, tmp_path: Path) -> None:
    model = tmp_path / "api" / "m.gguf"
    model.parent.mkdir()
    model.write_bytes(EXAMPLE_GGUF.read_bytes())
    c = api_factory(settings={"api_file_roots": [str(model.parent)]}).client
    assert c.post("/v1/gc").status_code == 200  # no body: the defaults
    assert c.post("/v1/models/ensure", json={"ref": str(model)}).status_code == 200
    unknown = c.post(f"/v1/models/file:{model}/leases", json={"holder": "x", "ttl": "10m", "tll_s": 5})
    assert unknown.status_code == 400 and "tll_s" in unknown.json()["error"]["message"], unknown.text
    lease = c.post(f"/v1/models/file:{model}/leases", json={"holder": "x", "ttl": "10m"})
    assert lease.status_code == 201, lease.text
    expires_in = (lease.json()["expires_ms"] - __import__("time").time() * 1000) / 1000
    assert 500 < expires_in <= 600
    mismatch = c.post("/v1/models/ensure", json={"ref": str(model), "expected_digest": "sha256:" + "0" * 64})
    message = mismatch.json()["error"]["message"]
    assert mismatch.status_code == 422 and "--no-strict" not in message and '"strict": false' in message, message
    removal = c.delete(f"/v1/models/file:{model}")
    assert removal.status_code == 409 and "?force=true" in removal.json()["error"]["message"], removal.text


def test_the_clis_digest_spelling_is_accepted_by_the_api(api_factory: Any, tmp_path: Path) -> None:
    from make_tiny_gguf import write_tiny_gguf

    root = tmp_path / "models"
    root.mkdir()
    model = write_tiny_gguf(root / "m.gguf")
    right = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    api = api_factory(settings={"api_file_roots": [str(root)]})
    wrong = api.client.post("/v1/models/ensure", json={"ref": f"file:{model}", "digest": "sha256:" + "0" * 64})
    assert wrong.status_code == 422, wrong.text  # checked as expected_digest is, not refused as unknown
    made = api.client.post("/v1/models/ensure", json={"ref": f"file:{model}", "digest": right})
    assert made.status_code == 200 and made.json()["digest"] == right, made.text
