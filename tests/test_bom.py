"""inspect --bom: a CycloneDX ML-BOM of a provisioned model (issue 28 item 4): every file's hash, the source and
revision, format facts, the verification and the safety lint, valid against the CycloneDX schema."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXAMPLE_GGUF, run_cli
from .helpers import transformers_repo


def _validated(text: str) -> dict[str, Any]:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom: dict[str, Any] = json.loads(text)
    return bom


def _properties(component: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in component.get("properties", [])}


def test_a_gguf_bom_carries_its_hash_facts_verification_and_lint(cache_dir: Path, tmp_path: Path) -> None:
    digest = "sha256:" + hashlib.sha256(EXAMPLE_GGUF.read_bytes()).hexdigest()
    assert run_cli("ensure", str(EXAMPLE_GGUF), "--digest", digest, cache_dir=cache_dir).code == 0
    out = tmp_path / "model.cdx.json"
    done = run_cli("inspect", str(EXAMPLE_GGUF), "--bom", str(out), cache_dir=cache_dir)
    assert done.code == 0 and "validated" in done.stderr, done.stderr
    model = _validated(out.read_text())["metadata"]["component"]
    assert model["type"] == "machine-learning-model" and model["name"] == f"file:{EXAMPLE_GGUF}"
    assert model["hashes"] == [{"alg": "SHA-256", "content": digest.split(":")[1]}]
    facts = _properties(model)
    assert facts["model-provisioner:verification"] == "verified"
    assert facts["model-provisioner:expected-digest"] == digest
    assert facts["model-provisioner:architecture"] == "llama" and facts["model-provisioner:safety-lint"] == "ok"
    refused = run_cli("inspect", str(tmp_path / "not-there.gguf"), "--bom", "-", cache_dir=cache_dir)
    assert refused.code == 3


def test_a_repo_bom_lists_every_file_with_its_own_hash(net: Any, hub: Any, cache_dir: Path, tmp_path: Path) -> None:
    files = transformers_repo()
    commit = hub.add_repo("org/bom", files)
    net(hub.url).ensure_present("hf:org/bom")
    done = run_cli("inspect", "hf:org/bom", "--bom", "-", cache_dir=cache_dir)
    assert done.code == 0, done.stderr
    model = _validated(done.stdout)["metadata"]["component"]
    listed = {c["name"]: c["hashes"][0]["content"] for c in model["components"]}
    assert listed and all(hashlib.sha256(files[name]).hexdigest() == sha for name, sha in listed.items())
    assert "pytorch_model.bin" not in listed  # safetensors were there: the pickle was never fetched
    assert _properties(model)["model-provisioner:revision"] == commit


@pytest.mark.slow  # starts an engine
def test_provision_and_up_write_the_bom_beside_the_handoff(
    cache_dir: Path, tmp_path: Path, llama_server: str, tiny_model: Path
) -> None:
    config = tmp_path / "model.yaml"
    config.write_text(f"model_ref: {EXAMPLE_GGUF}\n")
    out = tmp_path / "out"
    done = run_cli("provision", "--config", str(config), "--out", str(out), "--bom", cache_dir=cache_dir)
    assert done.code == 0, done.stderr
    handoffs = list((out / ".runtime" / "engines").glob("*.json"))
    assert len(handoffs) == 1
    bom = _validated((out / ".runtime" / "bom" / f"{handoffs[0].stem}.cdx.json").read_text())
    assert bom["metadata"]["component"]["name"] == f"file:{EXAMPLE_GGUF}"
    refused = run_cli("up", str(tiny_model), "--bom", "--binary", llama_server, cache_dir=cache_dir)
    assert refused.code == 2 and "--handoff-dir" in refused.stderr
    served = tmp_path / "served"
    up = run_cli(
        "up",
        str(tiny_model),
        "--bom",
        "--handoff-dir",
        str(served),
        "--binary",
        llama_server,
        "--pool",
        "bom",
        cache_dir=cache_dir,
    )
    try:
        assert up.code == 0, up.stderr
        bom = _validated((served / ".runtime" / "bom" / "llamacpp.cdx.json").read_text())
        assert _properties(bom["metadata"]["component"])["model-provisioner:safety-lint"] == "ok"
    finally:
        run_cli("down", "--pool", "bom", cache_dir=cache_dir)
