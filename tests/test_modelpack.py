"""`push` writes a spec-exact CNCF ModelPack artifact (checked against the model-spec's own JSON schema,
../shared/modelpack/config-schema.json), and keeps doing so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema

from .conftest import run_cli
from .helpers import transformers_repo

SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "modelpack" / "config-schema.json"
LAYER_TYPES = {  # the model-spec's layer media types (raw, tar, tar+gzip, tar+zstd of each kind)
    f"application/vnd.cncf.model.{kind}.v1.{form}"
    for kind in ("weight", "weight.config", "doc", "code", "dataset")
    for form in ("raw", "tar", "tar+gzip", "tar+zstd")
}


def test_a_pushed_model_is_spec_exact_modelpack(hub: Any, registry: Any, cache_dir: Path) -> None:
    hub.add_repo("org/packed", transformers_repo(n_shards=2))
    env = {"HF_ENDPOINT": hub.url}
    assert run_cli("ensure", "hf:org/packed", cache_dir=cache_dir, env=env).code == 0
    pushed = run_cli(
        "push", "hf:org/packed", f"oci://{registry.host}/spec/packed:v1", "--json", cache_dir=cache_dir, env=env
    )
    assert pushed.code == 0, pushed.stderr
    base = f"http://{registry.host}/v2/spec/packed"
    manifest = httpx.get(
        f"{base}/manifests/v1", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10
    ).json()
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    config = httpx.get(f"{base}/blobs/{manifest['config']['digest']}", timeout=10).json()
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(config)
    assert config["modelfs"]["diffIds"] == [layer["digest"] for layer in manifest["layers"]]
    kinds = {}
    for layer in manifest["layers"]:
        assert layer["mediaType"] in LAYER_TYPES, layer["mediaType"]
        path = layer["annotations"]["org.cncf.model.filepath"]
        meta = json.loads(layer["annotations"]["org.cncf.model.file.metadata+json"])
        assert meta["name"] == path.rsplit("/", 1)[-1] and meta["size"] == layer["size"] and meta["typeflag"] == 48
        kinds[path] = layer["mediaType"].removeprefix("application/vnd.cncf.model.").rsplit(".v1.", 1)[0]
    assert kinds["config.json"] == "weight.config"
    assert all(v == "weight" for k, v in kinds.items() if k.endswith(".safetensors"))
