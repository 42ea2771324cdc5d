"""push to a team mirror (OCI registry as ModelPack, S3 prefix), then a fresh cache pulls through
``mirrors.models`` with zero bytes from the origin and the same digests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .conftest import run_cli
from .helpers import digest_of, gguf_bytes, hub_origin_bytes, s3_bucket, transformers_repo


def test_hf_repo_pushed_to_a_registry_mirror_is_pulled_with_zero_origin_bytes(
    hub: Any, registry: Any, cli: Any, tmp_path: Path, settings_file: Any
) -> None:
    commit = hub.add_repo("org/mirrored", transformers_repo(n_shards=2))
    env = {"HF_ENDPOINT": hub.url}
    first = cli("ensure", "hf:org/mirrored", "--json", env=env)
    assert first.code == 0, first.stderr
    origin = first.json()
    pushed = cli("push", "hf:org/mirrored", f"oci://{registry.host}/mirror/", "--json", env=env)
    assert pushed.code == 0, pushed.stderr
    push_info = pushed.json()
    assert push_info["digest"] == origin["digest"] and push_info["files"] == 7
    # again: every blob is already there
    again = cli("push", "hf:org/mirrored", f"oci://{registry.host}/mirror/", "--json", env=env).json()
    assert again["bytes_uploaded"] == 0 and again["bytes_skipped"] > 0

    # a second machine: empty cache, the mirror configured, the Hub still reachable but never used
    hub.cdn.reset()
    hub.server.reset()
    settings = settings_file(mirrors={"models": [f"oci://{registry.host}/mirror/"]})
    second = run_cli(
        "ensure",
        "hf:org/mirrored",
        "--json",
        cache_dir=tmp_path / "cache2",
        env={**env, "MODEL_PROVISIONER_SETTINGS": str(settings)},
    )
    assert second.code == 0, second.stderr
    pulled = second.json()
    assert hub_origin_bytes(hub) == 0 and hub.server.requests == []
    assert pulled["digest"] == origin["digest"]
    assert pulled["metadata"]["mirror"].startswith(f"oci://{registry.host}/mirror/")
    assert pulled["origin"].startswith(f"from mirror oci://{registry.host}/mirror/")  # not like an origin fetch
    assert pulled["local_path"].endswith(f"transformers/org/mirrored@{commit}")
    for name in ("config.json", "model-00001-of-00002.safetensors"):
        assert (Path(pulled["local_path"]) / name).read_bytes() == (Path(origin["local_path"]) / name).read_bytes()


def test_https_gguf_pushed_to_s3_mirror_and_pulled_back(
    s3: Any, fileserver: Any, cli: Any, tmp_path: Path, settings_file: Any
) -> None:
    s3.client().create_bucket(Bucket="team-mirror")
    data = gguf_bytes(tmp_path, context_length=1024)
    url = fileserver.put("models/m.gguf", data)
    first = cli("ensure", url, "--json")
    assert first.code == 0, first.stderr
    pushed = cli("push", url, "s3://team-mirror/models/", "--json")
    assert pushed.code == 0, pushed.stderr
    listing = s3.client().list_objects_v2(Bucket="team-mirror", Prefix="models/")
    keys = sorted(obj["Key"] for obj in listing["Contents"])
    assert len(keys) == 2 and any(k.endswith("/model-provisioner.json") for k in keys), keys

    fileserver.reset()
    settings = settings_file(mirrors={"models": ["s3://team-mirror/models/"]})
    second = run_cli(
        "ensure", url, "--json", cache_dir=tmp_path / "cache2", env={"MODEL_PROVISIONER_SETTINGS": str(settings)}
    )
    assert second.code == 0, second.stderr
    assert sum(fileserver.bytes_served.values()) == 0 and fileserver.requests == []
    pulled = second.json()
    assert pulled["digest"] == first.json()["digest"]
    assert Path(pulled["local_path"]).read_bytes() == data
    assert pulled["metadata"]["ctx_max"] == 1024


def test_a_tampered_mirror_copy_is_refused_and_the_origin_is_used(
    s3: Any, fileserver: Any, cli: Any, tmp_path: Path, settings_file: Any
) -> None:
    client = s3.client()
    client.create_bucket(Bucket="tampered")
    data = gguf_bytes(tmp_path, context_length=512)
    url = fileserver.put("models/t.gguf", data)
    assert cli("ensure", url).code == 0
    assert cli("push", url, "s3://tampered/m/").code == 0
    key = next(o["Key"] for o in client.list_objects_v2(Bucket="tampered")["Contents"] if o["Key"].endswith(".gguf"))
    client.put_object(Bucket="tampered", Key=key, Body=data[:-1] + b"\x00")  # someone overwrote the file
    settings = settings_file(mirrors={"models": ["s3://tampered/m/"]})
    second = run_cli(
        "ensure", url, "--json", cache_dir=tmp_path / "cache2", env={"MODEL_PROVISIONER_SETTINGS": str(settings)}
    )
    assert second.code == 4, second.stderr  # the manifest's sha256 is enforced: the bad copy is never Active
    assert "mismatch" in second.stderr.lower()


def test_push_to_an_explicit_tag_then_ensure_the_oci_ref(
    registry: Any, cli: Any, gguf_file: Path, tmp_path: Path
) -> None:
    # a local file registered in place is pushed from where it is
    local = cli("ensure", str(gguf_file), "--json")
    assert local.code == 0
    assert cli("push", str(gguf_file), f"oci://{registry.host}/team/local:v1").code == 0

    url_data = gguf_file.read_bytes()
    from .servers.oci_push import sha

    unknown = cli("push", "hf:org/never-seen", f"oci://{registry.host}/team/x:v1")
    assert unknown.code == 3 and "ensure it first" in unknown.stderr
    # provision through the registry path once (an ORAS-free route): push the model we got from a ref
    from .servers.oci_push import push_artifact

    push_artifact(
        registry.url,
        "team/src",
        "v1",
        [(url_data, "application/vnd.cncf.model.weight.v1.raw", {"org.cncf.model.filepath": "m.gguf"})],
    )
    src = f"oci://{registry.host}/team/src:v1"
    assert cli("ensure", src).code == 0
    pushed = cli("push", src, f"oci://{registry.host}/team/release:2024.1", "--json")
    assert pushed.code == 0, pushed.stderr
    manifest = json.loads(
        __import__("httpx")
        .get(
            f"{registry.url}/v2/team/release/manifests/2024.1",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        .content
    )
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    assert manifest["layers"][0]["annotations"]["org.cncf.model.filepath"] == "m.gguf"
    assert manifest["layers"][0]["digest"] == sha(url_data)
    fresh = run_cli("ensure", f"oci://{registry.host}/team/release:2024.1", "--json", cache_dir=tmp_path / "c3")
    assert fresh.code == 0, fresh.stderr
    assert fresh.json()["digest"] == sha(url_data)


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
