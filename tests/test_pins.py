"""What a digest pins: a digest given later makes a recorded entry's pin (CLI, model config, API); a local
directory answers by the same rule as a local file (an advisory mismatch never answers a strict request, a
verified pin holds when the digest is not repeated); a changed pinned file fails until it is restored."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from model_provisioner.core.hashing import repo_digest

from .conftest import EXAMPLE_GGUF
from .helpers import digest_of


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


def transformers_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    save_file({"w": np.arange(64, dtype=np.float32)}, str(root / "model.safetensors"))
    return root


def tree_digest(root: Path) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return repo_digest(
        [(p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size) for p in files]
    )


WRONG = "sha256:" + "0" * 64


def test_a_directory_accepted_as_advisory_never_answers_a_strict_request(cli: Any, tmp_path: Path) -> None:
    model = transformers_dir(tmp_path / "repo")
    advisory = cli("ensure", str(model), "--digest", WRONG, "--no-strict", "--json")
    assert advisory.code == 0, advisory.stderr
    assert json.loads(advisory.stdout)["verification"] == "mismatch_advisory"
    strict = cli("ensure", str(model), "--digest", WRONG)
    # the same rule as a file: the advisory entry is not an answer to a strict request; the bytes are compared
    assert strict.code == 4 and "mismatch" in strict.stderr, strict.stderr
    right = cli("ensure", str(model), "--digest", tree_digest(model), "--json")
    assert right.code == 0 and json.loads(right.stdout)["verification"] == "verified", right.stderr


def test_a_directory_keeps_its_verified_pin_when_the_digest_is_not_repeated(cli: Any, tmp_path: Path) -> None:
    model = transformers_dir(tmp_path / "repo")
    pin = tree_digest(model)
    assert cli("ensure", str(model), "--digest", pin).code == 0
    original = (model / "config.json").read_text()
    (model / "config.json").write_text(original.replace("llama", "llamb"))
    for _ in range(2):  # no digest given: the pin from the first run still applies, every time
        changed = cli("ensure", str(model))
        assert changed.code == 4 and pin in changed.stderr, changed.stderr
    entry = json.loads(cli("inspect", str(model), "--json").stdout)
    assert entry["lifecycle"] == "Failed" and entry["expected_digest"] == pin  # a failure never drops the pin
    (model / "config.json").write_text(original)
    restored = cli("ensure", str(model), "--json")
    assert restored.code == 0 and json.loads(restored.stdout)["verification"] == "verified", restored.stderr


def test_a_changed_pinned_file_fails_every_time_until_it_is_restored(cli: Any, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    original = bytes(range(256)) * 4
    model.write_bytes(original)
    pin = "sha256:" + hashlib.sha256(original).hexdigest()
    assert cli("ensure", str(model), "--digest", pin).code == 0
    model.write_bytes(original[::-1])
    for _ in range(2):  # the second try used to record the new bytes as the model ("recorded", exit 0)
        changed = cli("ensure", str(model))
        assert changed.code == 4 and pin in changed.stderr, changed.stderr
    model.write_bytes(original)
    restored = cli("ensure", str(model), "--json")
    assert restored.code == 0 and json.loads(restored.stdout)["verification"] == "verified", restored.stderr
