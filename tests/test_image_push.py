"""``push --as-image``: an OCI image that real image tools take (skopeo copies it to an OCI layout, umoci
unpacks it), whose ``rootfs/models/`` holds exactly the verified model; and ``ensure`` pulls it back."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from model_provisioner.core.hashing import repo_digest

from .conftest import run_cli
from .helpers import transformers_repo


def test_an_image_push_is_mounted_by_image_tools_and_pulled_back(
    hub: Any, registry: Any, cache_dir: Path, tmp_path: Path
) -> None:
    if not (shutil.which("skopeo") and shutil.which("umoci")):
        pytest.fail("skopeo and umoci are installed by scripts/test.sh (apt-get)")
    hub.add_repo("org/imaged", transformers_repo(n_shards=2))
    env = {"HF_ENDPOINT": hub.url}
    model = run_cli("ensure", "hf:org/imaged", "--json", cache_dir=cache_dir, env=env)
    assert model.code == 0, model.stderr
    digest = model.json()["digest"]
    ref = f"oci://{registry.host}/images/imaged:v1"
    pushed = run_cli("push", "hf:org/imaged", ref, "--as-image", "--json", cache_dir=cache_dir, env=env)
    assert pushed.code == 0, pushed.stderr
    base = f"http://{registry.host}/v2/images/imaged"
    manifest = httpx.get(
        f"{base}/manifests/v1", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10
    ).json()
    config = httpx.get(f"{base}/blobs/{manifest['config']['digest']}", timeout=10).json()
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in manifest["layers"]]
    layout = tmp_path / "layout"
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://{registry.host}/images/imaged:v1", f"oci:{layout}:v1"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:v1", str(bundle)], check=True, capture_output=True, timeout=120
    )
    root = bundle / "rootfs" / "models"
    files = sorted(p for p in root.rglob("*") if p.is_file())
    unpacked = repo_digest(
        [(p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size) for p in files]
    )
    assert unpacked == digest  # the image's /models is the verified model, byte for byte, names included
    again = run_cli("push", "hf:org/imaged", ref, "--as-image", "--json", cache_dir=cache_dir, env=env)
    assert again.json()["bytes_uploaded"] == 0  # reproducible layers: the second push finds them all
    assert again.json()["manifest_digest"] == pushed.json()["manifest_digest"]
    pulled = run_cli("ensure", ref, "--json", cache_dir=tmp_path / "other-cache")
    assert pulled.code == 0, pulled.stderr
    assert pulled.json()["digest"] == digest
