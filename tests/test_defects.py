"""Issue 13: defects found trying the tool as a new user would. One regression test per item, through the CLI
or the HTTP API, against real servers on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .conftest import EXAMPLE_GGUF, run_cli, wait_for
from .helpers import MiB, digest_of, partial_bytes_held, s3_bucket, safetensors_bytes, sign


# ------------------------------------------------------------- 1. a digest given later becomes the pin
def test_a_digest_given_for_a_recorded_entry_becomes_its_pin(cli: Any, gguf_file: Path) -> None:
    digest = digest_of(gguf_file.read_bytes())
    assert cli("ensure", str(gguf_file)).code == 0  # recorded
    pinned = cli("ensure", str(gguf_file), "--digest", digest, "--json")
    assert pinned.code == 0 and pinned.json()["verification"] == "verified", pinned.stdout
    with open(gguf_file, "ab") as fh:
        fh.write(b"X")
    changed = cli("ensure", str(gguf_file))  # the pin is not repeated: it still applies
    assert changed.code == 4 and "mismatch" in changed.stderr, changed.stderr


def test_a_digest_in_a_model_config_pins_a_recorded_entry(cli: Any, gguf_file: Path, tmp_path: Path) -> None:
    assert cli("ensure", str(gguf_file)).code == 0
    config = tmp_path / "model.yaml"
    config.write_text(f"model_ref: {gguf_file}\nexpected_digest: {digest_of(gguf_file.read_bytes())}\n")
    out = tmp_path / "out"
    assert cli("provision", "--config", str(config), "--out", str(out)).code == 0
    handoff = json.loads((out / ".runtime" / "engines" / "llamacpp.json").read_text())
    assert handoff["metadata"]["verification"] == "verified"
    with open(gguf_file, "ab") as fh:
        fh.write(b"X")
    assert cli("ensure", str(gguf_file)).code == 4


def test_a_digest_through_the_api_pins_a_recorded_entry(api_factory: Any, tmp_path: Path) -> None:
    model = tmp_path / "api" / "m.gguf"
    model.parent.mkdir()
    model.write_bytes(EXAMPLE_GGUF.read_bytes())
    c = api_factory(settings={"api_file_roots": [str(model.parent)]}).client
    assert c.post("/v1/models/ensure", json={"ref": str(model)}).json()["verification"] == "recorded"
    pinned = c.post("/v1/models/ensure", json={"ref": str(model), "expected_digest": digest_of(model.read_bytes())})
    assert pinned.status_code == 200 and pinned.json()["verification"] == "verified"
    with open(model, "ab") as fh:
        fh.write(b"X")
    assert c.post("/v1/models/ensure", json={"ref": str(model)}).status_code == 422


# -------------------------------------------------------- 2. redaction rewrites secrets, never names
def test_names_that_look_like_tokens_are_stored_as_they_are(
    cli: Any, tmp_path: Path, cache_dir: Path, settings_file: Any
) -> None:
    model = tmp_path / "hf_tinyllama.gguf"
    model.write_bytes(EXAMPLE_GGUF.read_bytes())
    out = tmp_path / "out"
    ensured = cli("ensure", str(model), "--json", "--handoff-dir", str(out))
    assert ensured.code == 0 and ensured.json()["id"] == f"file:{model}"
    listed = cli("ls", "--json").json()["models"]
    assert listed[0]["id"] == f"file:{model}"
    provenance = (out / ".runtime" / "provenance" / "models.jsonl").read_text()
    assert "hf_tinyllama.gguf" in provenance and "***" not in provenance
    raw = b"".join(p.read_bytes() for p in cache_dir.glob("catalog.db*"))
    assert b"hf_tinyllama.gguf" in raw and b"***" not in raw
    bad = settings_file(hf_endpoit="x")
    unknown = run_cli("ls", cache_dir=cache_dir, env={"MODEL_PROVISIONER_SETTINGS": str(bad)})
    assert unknown.code == 2 and "hf_endpoint" in unknown.stderr and "***" not in unknown.stderr


def test_secrets_in_use_are_redacted_by_value_and_shape(tmp_path: Path) -> None:
    from model_provisioner import Settings
    from model_provisioner.core.redact import redact_text

    shapeless = "Tok3n-w1thout-any-shape"  # no known token shape: redacted because it is in use
    Settings.from_env(
        {"HF_TOKEN": shapeless, "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCY"}, cache_dir=tmp_path
    )
    text = f"GET failed with {shapeless}; key wJalrXUtnFEMI/K7MDENG/bPxRfiCY; hf_{'A' * 34} in ./hf_tinyllama.gguf"
    assert redact_text(text) == "GET failed with ***; key ***; *** in ./hf_tinyllama.gguf"


# ------------------------------------------------------------ 3. Ctrl-C and SIGTERM keep the partial
import pytest  # noqa: E402


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_an_interrupted_download_is_kept_shown_and_resumed(
    fileserver: Any, cache_dir: Path, settings_file: Any, signame: str, mode: str
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from .servers.fileserver import Fault

    data = os.urandom(24 * MiB)
    url = fileserver.put("big.bin", data)
    transfer = {
        "parallel_threshold_bytes": 8 * MiB,
        "parallel_chunk_min_bytes": 2 * MiB,
        "single_stream_enough_bytes_per_s": 1e15,
        "connections": 4,
        "stall_timeout_s": 30,
    }
    if mode == "stream":
        transfer["connections"] = 1
    # every range after the first stalls half-way: the download is interrupted while parallel ranges run
    fileserver.faults["/big.bin"] = Fault(stall_after=MiB, stall_s=20, times=4, clean_first=1)
    env = {**os.environ, "MODEL_PROVISIONER_SETTINGS": str(settings_file(transfer=transfer))}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "model_provisioner",
            "--cache-dir",
            str(cache_dir),
            "ensure",
            url,
            "--digest",
            digest_of(data),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: fileserver.served("big.bin") >= 3 * MiB, 20, "3 MiB served")
    # more than the first range is on disk: the rerun must resume past it
    wait_for(lambda: partial_bytes_held(cache_dir) > 2 * MiB, 20, "more than 2 MiB on disk")
    proc.send_signal(getattr(signal, signame))
    started = time.monotonic()
    code = proc.wait(timeout=15)
    assert code == 130 and time.monotonic() - started < 5, proc.stderr.read() if proc.stderr else ""
    assert any((cache_dir / "partial").glob("*.part"))
    listed = run_cli("ls", "--json", cache_dir=cache_dir).json()["models"]
    assert [m["lifecycle"] for m in listed] == ["Interrupted"]
    served_before = fileserver.served("big.bin")
    fileserver.faults.clear()
    rerun = run_cli(
        "ensure",
        url,
        "--digest",
        digest_of(data),
        "--json",
        cache_dir=cache_dir,
        env={"MODEL_PROVISIONER_SETTINGS": env["MODEL_PROVISIONER_SETTINGS"]},
    )
    assert rerun.code == 0, rerun.stderr
    assert rerun.json()["bytes_fetched"] < len(data) - 2 * MiB  # resumed, not fetched again
    assert fileserver.served("big.bin") - served_before < len(data) - 2 * MiB
    assert run_cli("ls", "--json", cache_dir=cache_dir).json()["models"][0]["lifecycle"] == "Active"


def test_gc_cleans_an_interrupted_entry(cache_dir: Path, fileserver: Any, settings_file: Any) -> None:
    import os
    import signal
    import subprocess
    import sys

    from .servers.fileserver import Fault

    url = fileserver.put("gc.bin", os.urandom(4 * MiB))
    fileserver.faults["/gc.bin"] = Fault(stall_after=MiB, stall_s=20, times=1)
    env = {**os.environ, "MODEL_PROVISIONER_SETTINGS": str(settings_file())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "model_provisioner", "--cache-dir", str(cache_dir), "ensure", url],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    # the stalled download has begun writing its partial file
    partials = cache_dir / "partial"
    wait_for(lambda: fileserver.served("gc.bin") >= MiB and any(partials.glob("*.part")), 30, "a partial file")
    proc.send_signal(signal.SIGKILL)  # no chance to mark it: a stale Pending row
    proc.wait(timeout=10)
    assert [m["lifecycle"] for m in run_cli("ls", "--json", cache_dir=cache_dir).json()["models"]] == ["Interrupted"]
    # every front end derives it the same way (issue 27 item 1): before, inspect said Pending
    assert run_cli("inspect", url, "--json", cache_dir=cache_dir).json()["lifecycle"] == "Interrupted"
    gc = run_cli("gc", "--json", cache_dir=cache_dir)
    assert gc.code == 0, gc.stderr
    assert run_cli("ls", "--json", cache_dir=cache_dir).json()["models"] == []
    assert any((cache_dir / "partial").glob("*.part"))  # young partials are kept for a resume


# ------------------------------------------- 4. every GGUF llama.cpp ships is accepted and read correctly
def _reference_readings(files: list[Path], cache: Path) -> dict[str, dict[str, Any]]:
    """What gguf.GGUFReader reads from each file (architecture, context length, tokenizer model). The reader
    takes ~6 s per vocab file, so its readings are cached beside the sdist, keyed by each file's sha256."""
    from gguf import GGUFReader

    cache_file = cache / "gguf-reference-readings.json"
    known: dict[str, dict[str, Any]] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    out: dict[str, dict[str, Any]] = {}
    for path in files:
        key = digest_of(path.read_bytes())
        if key not in known:
            reader = GGUFReader(path)

            def field(name: str, reader: Any = reader) -> Any:
                item = reader.fields.get(name)
                return None if item is None else item.contents()

            arch = field("general.architecture")
            known[key] = {
                "architecture": arch,
                "ctx_max": field(f"{arch}.context_length"),
                "tokenizer_model": field("tokenizer.ggml.model"),
            }
            cache_file.write_text(json.dumps(known, indent=1, sort_keys=True))
        out[path.name] = known[key]
    return out


def test_every_vocab_gguf_in_the_llama_cpp_sources_is_accepted(
    llamacpp_sdist: Path, tmp_path: Path, cache_dir: Path
) -> None:
    import tarfile

    from model_provisioner import ModelProvisioner

    files = []
    with tarfile.open(llamacpp_sdist) as sdist:
        for member in sdist:
            base = member.name.rsplit("/", 1)[-1]
            if (
                member.isfile()
                and "/vendor/llama.cpp/models/" in member.name
                and base.startswith("ggml-vocab-")
                and base.endswith(".gguf")
            ):
                source = sdist.extractfile(member)
                assert source is not None
                (tmp_path / base).write_bytes(source.read())
                files.append(tmp_path / base)
    assert len(files) >= 15, files
    reference = _reference_readings(files, llamacpp_sdist.parent)
    with ModelProvisioner.file_only(cache_dir) as prov:
        for path in files:
            resolved = prov.ensure_present(path)  # was: "truncated GGUF: tensor data ends at byte N+3"
            assert resolved.format == "gguf", path.name
            for key, expected in reference[path.name].items():
                assert resolved.metadata.get(key) == expected, (path.name, key)
    inspected = run_cli("inspect", str(files[0]), "--json", cache_dir=tmp_path / "other")
    assert inspected.code == 0, inspected.stderr


# ---------------------------------------------------------- 5. push local files and directories directly
def test_a_local_file_and_directory_are_pushed_and_pulled_back(
    registry: Any, s3: Any, cli: Any, tmp_path: Path, make_gguf: Any
) -> None:

    model = make_gguf("my-finetune.gguf", context_length=2048)
    assert cli("ensure", str(model)).code == 0
    pushed = cli("push", str(model), f"oci://{registry.host}/team/finetune:v1", "--json")
    assert pushed.code == 0, pushed.stderr
    assert pushed.json()["digest"] == digest_of(model.read_bytes())
    assert pushed.json()["bytes_uploaded"] == model.stat().st_size
    pulled = run_cli(
        "ensure",
        f"oci://{registry.host}/team/finetune:v1",
        "--digest",
        digest_of(model.read_bytes()),
        "--json",
        cache_dir=tmp_path / "other",
    )
    assert pulled.code == 0, pulled.stderr
    assert Path(pulled.json()["local_path"]).read_bytes() == model.read_bytes()

    tree = tmp_path / "repo"
    tree.mkdir()
    (tree / "config.json").write_text('{"model_type": "llama"}')
    from .helpers import safetensors_bytes

    (tree / "model.safetensors").write_bytes(safetensors_bytes(2000))
    ensured = cli("ensure", str(tree), "--json")
    assert ensured.code == 0, ensured.stderr
    s3_bucket(s3, "team")
    to_s3 = cli("push", str(tree), "s3://team/mirror/", "--json")
    assert to_s3.code == 0, to_s3.stderr
    assert to_s3.json()["digest"] == ensured.json()["digest"] and to_s3.json()["files"] == 2
    to_oci = cli("push", f"file:{tree}", f"oci://{registry.host}/team/repo:v1", "--json")
    assert to_oci.code == 0, to_oci.stderr


def test_a_local_file_changed_since_it_was_verified_is_not_pushed(registry: Any, cli: Any, make_gguf: Any) -> None:
    model = make_gguf("changed.gguf")
    assert cli("ensure", str(model)).code == 0
    with open(model, "ab") as fh:
        fh.write(b"X")
    result = cli("push", str(model), f"oci://{registry.host}/team/changed:v1")
    assert result.code == 4 and "changed.gguf" in result.stderr, result.stderr
    manifest = __import__("httpx").get(
        f"{registry.url}/v2/team/changed/manifests/v1", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
    )
    assert manifest.status_code == 404  # nothing was published under the tag


# ------------------------------------------------------ 6. verify, rm and ensure say what really happened
def test_verify_rm_and_ensure_say_what_happened(cli: Any, tmp_path: Path, make_gguf: Any) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    not_gguf = tmp_path / "fake.gguf"
    not_gguf.write_bytes(b"<html>not a model</html>")
    for bad in (empty, not_gguf):
        assert cli("ensure", str(bad)).code == 4
        verified = cli("verify", str(bad))
        assert verified.code == 4 and verified.stdout.startswith("FAILED") and "ok" not in verified.stdout.split()[0]
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "config.json").write_text("{}")

    (tree / "model.safetensors").write_bytes(safetensors_bytes(100))
    assert cli("ensure", str(tree)).code == 0
    good = make_gguf("good.gguf")
    assert cli("ensure", str(good)).code == 0
    every = cli("verify", str(tree), str(good))
    assert every.code == 0, every.stdout
    assert all(f"file:{p}" in every.stdout for p in (tree, good)), every.stdout
    notes = tmp_path / "readme.txt"
    notes.write_text("just notes\n")
    ensured = cli("ensure", str(notes))
    assert ensured.code == 0 and "no model format recognised" in ensured.stderr, ensured.stderr
    assert cli("inspect", str(notes), "--json").json()["metadata"]["format"] == "file"
    removed = cli("rm", str(notes))
    assert removed.code == 0 and "forgot" in removed.stdout and "stays where it is" in removed.stdout
    assert notes.read_text() == "just notes\n"


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


# -------------------------------------------------------- 15. a repo is laid out by the weights it holds
def test_a_gguf_repo_with_a_config_json_means_its_gguf_and_no_weights_is_an_error(
    hub: Any, cache_dir: Path, settings_file: Any
) -> None:
    gguf = EXAMPLE_GGUF.read_bytes()
    hub.add_repo(
        "org/gguf-and-config",
        {"config.json": b'{"model_type": "llama"}', "m-Q4_K_M.gguf": gguf, "README.md": b"readme"},
    )
    hub.add_repo("org/no-weights", {"config.json": b'{"model_type": "llama"}', "README.md": b"readme"})
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file()), "HF_ENDPOINT": hub.url}
    result = run_cli("ensure", "hf:org/gguf-and-config", "--json", cache_dir=cache_dir, env=env)
    assert result.code == 0, result.stderr
    assert result.json()["metadata"]["format"] == "gguf" and Path(result.json()["local_path"]).read_bytes() == gguf
    empty = run_cli("ensure", "hf:org/no-weights", cache_dir=cache_dir, env=env)
    assert empty.code == 4 and "no loadable weights" in empty.stderr and "safetensors" in empty.stderr, empty.stderr
    assert run_cli("locate", "hf:org/no-weights", cache_dir=cache_dir, env=env).code == 3


# --------------------------------------------------------------------- 9. leases can be seen and named
def test_leases_are_listed_and_named_where_they_block(
    cli: Any, api_factory: Any, tmp_path: Path, cache_dir: Path
) -> None:
    model = tmp_path / "api" / "m.gguf"
    model.parent.mkdir()
    model.write_bytes(EXAMPLE_GGUF.read_bytes())
    assert cli("ensure", str(model)).code == 0
    both = cli("lease", str(model), "--ttl", "1h", "--pid", "1", "--holder", "job42", "--json").json()
    assert both["pid"] == 1 and both["expires_ms"] - both["created_ms"] == 3600 * 1000  # TTL and pid, both kept
    ttl_only = cli("lease", str(model), "--ttl", "10m", "--holder", "job43").stdout.strip()
    listed = cli("leases", "--json").json()["leases"]
    assert {entry["lease_id"] for entry in listed} == {both["lease_id"], ttl_only}
    text = cli("leases").stdout
    assert "None" not in text and "job42" in text and "pid 1 on" in text and "expires in" in text
    refused = cli("rm", str(model))
    assert refused.code == 5 and both["lease_id"] in refused.stderr and ttl_only in refused.stderr
    assert "None" not in refused.stderr and "release" in refused.stderr
    c = api_factory(settings={"api_file_roots": [str(model.parent)]}).client
    assert {entry["lease_id"] for entry in c.get("/v1/leases").json()["leases"]} == {both["lease_id"], ttl_only}
    assert cli("release", both["lease_id"]).code == 0 and cli("release", ttl_only).code == 0
    assert cli("leases", "--json").json()["leases"] == []


# ------------------------------------------------------------- 11. signature set-up errors are exit 2
def test_signature_setup_errors_are_exit_2_and_change_nothing(
    cli: Any, gguf_file: Path, tmp_path: Path, cache_dir: Path, keys: tuple[Path, Path]
) -> None:
    import os
    import subprocess
    import sys

    assert cli("ensure", str(gguf_file)).code == 0  # Active, recorded
    missing = cli("ensure", str(gguf_file), "--require-signature", "--signature-key", str(tmp_path / "nope.pem"))
    assert missing.code == 2 and "--signature-key" in missing.stderr and "Errno" not in missing.stderr
    no_key = cli("ensure", str(gguf_file), "--require-signature")
    assert no_key.code == 2 and "--signature-key" in no_key.stderr, no_key.stderr
    without_extra = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['model_signing'] = None; "
            "from model_provisioner.cli import main; sys.exit(main(sys.argv[1:]))",
            "--cache-dir",
            str(cache_dir),
            "ensure",
            str(gguf_file),
            "--require-signature",
            "--signature-key",
            str(gguf_file),
        ],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=60,
    )
    assert without_extra.returncode in (2,), without_extra.stderr
    assert "model-provisioner[signing]" in without_extra.stderr
    assert [m["lifecycle"] for m in cli("ls", "--json").json()["models"]] == ["Active"]  # nothing changed
    # a file changed under a valid signature: exit 4 naming it, both digests in hex
    private, public = keys
    signed = digest_of(gguf_file.read_bytes())
    sign(gguf_file, private)
    with open(gguf_file, "ab") as fh:
        fh.write(b"X")
    changed = cli("ensure", str(gguf_file), "--require-signature", "--signature-key", str(public))
    assert changed.code == 4 and str(gguf_file) in changed.stderr, changed.stderr
    assert signed in changed.stderr and digest_of(gguf_file.read_bytes()) in changed.stderr
    assert "digest_value=b" not in changed.stderr


# --------------------------------------------------------------- 12. a small core, extras by name
def _run_without(modules: list[str], *args: str, cache_dir: Path) -> Any:
    import os
    import subprocess
    import sys

    block = "; ".join(f"sys.modules[{m!r}] = None" for m in modules)
    code = f"import sys; {block}; from model_provisioner.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "--cache-dir", str(cache_dir), *args],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=60,
    )


def test_the_core_install_is_small_and_each_missing_extra_is_named(
    cache_dir: Path, tmp_path: Path, gguf_file: Path
) -> None:
    import tomllib

    from .conftest import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = sorted(d.split(">")[0].split("=")[0].split("[")[0].strip() for d in project["dependencies"])
    assert core == ["PyYAML", "httpx", "huggingface_hub", "rich"]
    extras = project["optional-dependencies"]
    assert {"s3", "oci", "triton", "server", "signing", "all"} <= set(extras)
    # a local GGUF needs nothing else
    plain = _run_without(
        ["boto3", "botocore", "fastapi", "uvicorn", "prometheus_client", "zstandard", "tritonclient", "model_signing"],
        "ensure",
        str(gguf_file),
        cache_dir=cache_dir,
    )
    assert plain.returncode == 0, plain.stderr
    for modules, args, extra in (
        (["boto3"], ["ensure", "s3://bucket/key.gguf"], "s3"),
        (["fastapi"], ["serve", "--port", "1"], "server"),
        (
            ["model_signing"],
            ["ensure", str(gguf_file), "--require-signature", "--signature-key", str(gguf_file)],
            "signing",
        ),
    ):
        result = _run_without(modules, *args, cache_dir=cache_dir)
        assert result.returncode == 2, (extra, result.stderr)
        assert f"pip install 'model-provisioner[{extra}]'" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_version_flag(cli: Any) -> None:
    from importlib.metadata import version

    result = cli("--version")
    assert result.code == 0 and version("model-provisioner") in result.stdout


# ------------------------------------------------------------- 10. model configs: documented, lists, output
def test_a_model_config_with_a_list_and_cli_spellings(cli: Any, tmp_path: Path, make_gguf: Any) -> None:
    first = make_gguf("a.gguf", context_length=1024)
    config = tmp_path / "models" / "models.yaml"
    config.write_text(
        "models:\n"
        f"  - ref: ./a.gguf\n    digest: {digest_of(first.read_bytes())}\n"  # relative to the config's folder
        f"  - model_ref: {tmp_path / 'models' / 'tree'}\n    engine: vllm\n"
    )
    tree = tmp_path / "models" / "tree"
    tree.mkdir()
    (tree / "config.json").write_text('{"model_type": "llama"}')

    (tree / "model.safetensors").write_bytes(safetensors_bytes(100))
    out = tmp_path / "out"
    result = cli("provision", "--config", str(config), "--out", str(out), "--json")
    assert result.code == 0, result.stderr
    answers = result.json()["models"]
    assert [a["engine"] for a in answers] == ["llamacpp", "vllm"]
    assert all(Path(a["handoff"]).is_file() for a in answers)
    assert Path(answers[0]["handoff"]) == out / ".runtime" / "engines" / "llamacpp.json"
    text = cli("provision", "--config", str(config), "--out", str(out))
    assert text.code == 0 and "llamacpp.json" in text.stderr + text.stdout
    clash = tmp_path / "clash.yaml"
    clash.write_text(f"models:\n  - model_ref: {first}\n  - model_ref: {first}\n")
    refused = cli("provision", "--config", str(clash), "--out", str(out))
    assert refused.code == 2 and "llamacpp.json" in refused.stderr, refused.stderr
    missing = cli("provision", "--config", str(tmp_path / "absent.yaml"), "--out", str(out))
    assert missing.code == 3 and "absent.yaml" in missing.stderr


# ------------------------------------------------------------------ 14. output that says what happened
def test_refresh_mirror_inspect_and_durations_say_what_happened(
    cli: Any, fileserver: Any, tmp_path: Path, settings_file: Any, gguf_file: Path
) -> None:
    url = fileserver.put("r.gguf", EXAMPLE_GGUF.read_bytes())
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file())}
    assert cli("ensure", url, env=env).code == 0
    same = cli("ensure", url, "--refresh", env=env)
    assert same.code == 0 and "not modified" in same.stderr, same.stderr
    fileserver.put("r.gguf", EXAMPLE_GGUF.read_bytes()[:-1] + b"Z")
    changed = cli("ensure", url, "--refresh", env=env)
    assert changed.code == 0 and "changed at the source" in changed.stderr, changed.stderr
    assert cli("ensure", str(gguf_file)).code == 0
    inspected = cli("inspect", str(gguf_file))
    assert "None" not in inspected.stdout and "T" in inspected.stdout.split("last_used:")[1].split("\n")[0]
    bare = cli("gc", "--grace", "5")
    assert bare.code == 2 and "unit" in bare.stderr, bare.stderr
    assert cli("gc", "--grace", "5m").code == 0


def test_the_library_prints_nothing_by_itself(tmp_path: Path, gguf_file: Path) -> None:
    import subprocess
    import sys

    code = (
        "from model_provisioner import ModelProvisioner\n"
        f"with ModelProvisioner.file_only({str(tmp_path / 'c')!r}) as p: p.ensure_present({str(gguf_file)!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
