"""Pull-through registry mirrors (containerd hosts.toml semantics): Debian's docker-registry as the origin and a
second one in proxy mode in front of it. Nodes pull through the mirror; the origin serves each blob once; a
mirror that serves other bytes is refused and the origin used. Counted from the registries' access logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import run_cli
from .servers.fileserver import FileServer
from .servers.registry import Registry


def pull(ref: str, cache: Path, settings: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "model_provisioner", "--cache-dir", str(cache), "ensure", ref,
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "MODEL_PROVISIONER_SETTINGS": str(settings)})


def test_nodes_pull_through_the_mirror_and_the_origin_serves_each_blob_once(tmp_path: Path, make_gguf: Any) -> None:
    origin = Registry(tmp_path / "origin")
    mirror = Registry(tmp_path / "mirror", proxy_of=origin.url)
    try:
        model = make_gguf("m.gguf", extra_tensor_bytes=4 << 20)
        made = run_cli("ensure", str(model), "--json", cache_dir=tmp_path / "publisher")
        assert made.code == 0, made.stderr
        digest = made.json()["digest"]
        ref = f"oci://{origin.host}/team/model:v1"
        assert run_cli("push", str(model), ref, cache_dir=tmp_path / "publisher").code == 0
        settings = tmp_path / "settings.json"
        settings.write_text(json.dumps({"registry_mirrors": {origin.host: [{"url": mirror.url}]}}))
        first = pull(ref, tmp_path / "node-0", settings)
        assert first.wait(timeout=120) == 0, first.stderr.read() if first.stderr else ""
        # the mirror fills its cache from the origin (distribution's proxy reads a new blob up to twice)
        filled = origin.blob_gets(digest)
        assert 1 <= filled <= 2
        nodes = [pull(ref, tmp_path / f"node-{i}", settings) for i in range(1, 8)]
        for node in nodes:
            out, err = node.communicate(timeout=120)
            assert node.returncode == 0, err
            assert json.loads(out)["digest"] == digest
        assert origin.blob_gets(digest) == filled  # seven more nodes: nothing more from the origin
        assert mirror.blob_gets(digest) >= 8
        origin.close()  # the origin goes away: the mirror still serves what it holds
        late = pull(ref.replace(":v1", f"@{_manifest_digest(tmp_path / 'node-0', ref)}"), tmp_path / "late", settings)
        out, err = late.communicate(timeout=120)
        assert late.returncode == 0, err
        assert json.loads(out)["digest"] == digest
    finally:
        mirror.close()
        origin.close()


def _manifest_digest(cache: Path, ref: str) -> str:
    entry = run_cli("inspect", ref, "--json", cache_dir=cache).json()
    return str(entry["metadata"]["oci"]["manifest_digest"])


def test_a_mirror_serving_other_bytes_is_refused_and_the_origin_used(
    tmp_path: Path, make_gguf: Any, registry: Any
) -> None:
    model = make_gguf("p.gguf", extra_tensor_bytes=1 << 20)
    made = run_cli("ensure", str(model), "--json", cache_dir=tmp_path / "publisher")
    digest = made.json()["digest"]
    ref = f"oci://{registry.host}/poison/model:v1"
    assert run_cli("push", str(model), ref, cache_dir=tmp_path / "publisher").code == 0
    bad = FileServer(tmp_path / "bad-mirror")
    try:
        bad.put(f"v2/poison/model/blobs/{digest}", b"not the model" * 1000)
        settings = tmp_path / "settings.json"
        settings.write_text(json.dumps({"registry_mirrors": {registry.host: [{"url": bad.url,
                                                                              "capabilities": ["pull"]}]}}))
        before = registry.blob_gets(digest)
        node = pull(ref, tmp_path / "node", settings)
        out, err = node.communicate(timeout=120)
        assert node.returncode == 0, err
        assert json.loads(out)["digest"] == digest
        assert any(r.path.startswith("/v2/poison/model/blobs/") for r in bad.requests)  # it was asked first
        assert registry.blob_gets(digest) == before + 1  # then the origin served the real bytes
    finally:
        bad.close()
