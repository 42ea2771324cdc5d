"""s3:// refs against moto's S3 server, and Triton repositories (from S3 prefixes and OCI artifacts)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_cli
from .helpers import s3_bucket, safetensors_bytes, triton_repo, write_tree
from .servers.s3 import SECRET_KEY


def test_object_with_checksum_is_source_verified(s3: Any, cli: Any, make_gguf: Any) -> None:
    data = Path(make_gguf("s3.gguf", context_length=1024)).read_bytes()
    client = s3_bucket(s3, "models")
    client.put_object(Bucket="models", Key="llama/tiny.gguf", Body=data, ChecksumAlgorithm="SHA256")
    result = cli("ensure", "s3://models/llama/tiny.gguf", "--json")
    assert result.code == 0, result.stderr
    out = result.json()
    assert out["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert out["metadata"]["ctx_max"] == 1024
    assert out["metadata"]["source"] == "s3://models/llama/tiny.gguf"
    assert "/gguf/models/llama/tiny.gguf@" in out["local_path"]
    info = cli("inspect", "s3://models/llama/tiny.gguf", "--json").json()
    assert info["verification"] == "source_verified"
    # no secret anywhere: the pre-signed URL's signature and the secret key stay out of output and catalog
    texts = [result.stdout, result.stderr, json.dumps(info)]
    assert not any(SECRET_KEY in t or "Signature=" in t or "X-Amz-Signature" in t for t in texts)


def test_checksum_mismatch_is_exit_4_and_nothing_registered(s3: Any, cli: Any, cache_dir: Path) -> None:
    client = s3_bucket(s3, "models")
    data = b"GGUF" + b"\x00" * 4000
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    client.put_object(Bucket="models", Key="bad/m.gguf", Body=data, ChecksumAlgorithm="SHA256", ChecksumSHA256=wrong)
    result = cli("ensure", "s3://models/bad/m.gguf")
    assert result.code == 4, result.stderr
    assert hashlib.sha256(b"other bytes").hexdigest() in result.stderr
    assert not any((cache_dir / "blobs" / "sha256").iterdir())
    assert not (cache_dir / "gguf").exists() or not any((cache_dir / "gguf").rglob("*"))


def test_expected_digest_mismatch_without_checksum(s3: Any, cli: Any) -> None:
    client = s3_bucket(s3, "models")
    client.put_object(Bucket="models", Key="plain/m.bin", Body=b"some bytes")
    result = cli("ensure", "s3://models/plain/m.bin", "--digest", "sha256:" + "0" * 64)
    assert result.code == 4, result.stderr


def test_missing_object_bucket_and_credentials(s3: Any, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    s3_bucket(s3, "models")
    missing = cli("ensure", "s3://models/nope/m.gguf")
    assert missing.code == 3 and "s3://models/nope/m.gguf" in missing.stderr, missing.stderr
    no_bucket = cli("ensure", "s3://no-such-bucket/x/")
    assert no_bucket.code == 3, no_bucket.stderr
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    no_creds = cli("ensure", "s3://models/nope/m.gguf")
    assert no_creds.code == 5 and "credentials" in no_creds.stderr, no_creds.stderr
    assert "Traceback" not in no_creds.stderr + missing.stderr


def test_prefix_as_transformers_repo(s3: Any, cli: Any) -> None:
    client = s3_bucket(s3, "models")
    files = {
        "config.json": json.dumps({"model_type": "mistral"}).encode(),
        "model.safetensors": safetensors_bytes(3000, seed=7),
        "tokenizer.json": b"{}",
    }
    for name, data in files.items():
        client.put_object(Bucket="models", Key=f"repos/mistral/{name}", Body=data, ChecksumAlgorithm="SHA256")
    result = cli("ensure", "s3://models/repos/mistral/", "--json")
    assert result.code == 0, result.stderr
    out = result.json()
    view = Path(out["local_path"])
    assert "/transformers/models/repos/mistral@" in str(view)
    assert {p.name for p in view.iterdir()} == set(files)
    assert out["metadata"]["repo_digest"] == out["digest"]


def test_prefix_key_escaping_the_prefix_is_refused(s3: Any, cli: Any, cache_dir: Path) -> None:
    client = s3_bucket(s3, "models")
    client.put_object(Bucket="models", Key="trav/config.json", Body=b"{}")
    client.put_object(Bucket="models", Key="trav/../../evil.safetensors", Body=b"x")
    result = cli("ensure", "s3://models/trav/")
    assert result.code == 4, result.stderr
    assert "refused" in result.stderr and "evil" in result.stderr


# ------------------------------------------------------------------------------------------ Triton
def test_triton_repository_from_s3_with_an_ensemble_and_its_handoff(s3: Any, cli: Any, tmp_path: Path) -> None:
    client = s3_bucket(s3, "models")
    for name, data in triton_repo().items():
        client.put_object(Bucket="models", Key=f"triton/prod/{name}", Body=data)
    out_dir = tmp_path / "out"
    result = cli("ensure", "s3://models/triton/prod/", "--json", "--engine", "triton", "--handoff-dir", str(out_dir))
    assert result.code == 0, result.stderr
    out = result.json()
    assert out["metadata"]["layout"] == "triton"
    repo = Path(out["local_path"])
    assert "/triton/models/triton/prod@" in str(repo)
    assert (repo / "encoder" / "config.pbtxt").is_file() and (repo / "tokenizer" / "1" / "model.py").is_file()
    handoff = json.loads((out_dir / ".runtime" / "engines" / "triton.json").read_text())
    assert handoff["model_repository"] == str(repo)
    models = {m["name"]: m for m in handoff["models"]}
    assert set(models) == {"encoder", "tokenizer", "pipeline"}
    assert models["pipeline"]["steps"] == ["tokenizer", "encoder"]
    assert models["encoder"]["platform"] == "onnxruntime_onnx" and models["encoder"]["versions"] == [1]
    assert models["tokenizer"]["backend"] == "python"


def test_broken_ensemble_names_the_missing_model(s3: Any, cli: Any, cache_dir: Path) -> None:
    client = s3_bucket(s3, "models")
    for name, data in triton_repo(second_step="detector").items():
        client.put_object(Bucket="models", Key=f"triton/broken/{name}", Body=data)
    result = cli("ensure", "s3://models/triton/broken/")
    assert result.code == 4, result.stderr
    assert "detector" in result.stderr and "pipeline" in result.stderr
    assert not (cache_dir / "triton").exists() or not any((cache_dir / "triton").rglob("config.pbtxt"))


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"m/config.pbtxt": b'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: "eight"\n'}, "does not parse"),
        ({"m/config.pbtxt": b'name: "other"\nplatform: "onnxruntime_onnx"\n', "m/1/model.onnx": b"x"}, "differs"),
        ({"m/config.pbtxt": b'name: "m"\nplatform: "onnxruntime_onnx"\n'}, "no numeric version"),
        ({"m/config.pbtxt": b'name: "m"\nplatform: "tensorrt_plan"\n', "m/1/model.onnx": b"x"}, "lacks model.plan"),
    ],
    ids=["syntax", "name", "no-version", "wrong-file"],
)
def test_broken_triton_configs(
    s3: Any, cli: Any, files: dict[str, bytes], message: str, request: pytest.FixtureRequest
) -> None:
    client = s3_bucket(s3, "models")
    prefix = f"triton/bad-{request.node.callspec.id}/"
    for name, data in files.items():
        client.put_object(Bucket="models", Key=prefix + name, Body=data)
    result = cli("ensure", f"s3://models/{prefix}")
    assert result.code == 4, result.stderr
    assert message in result.stderr and "config.pbtxt" in result.stderr


def test_triton_repository_from_an_oci_artifact(registry: Any, cli: Any) -> None:
    from .servers.oci_push import push_artifact, tar_bytes

    push_artifact(
        registry.url,
        "triton/prod",
        "v1",
        [(tar_bytes(triton_repo(), compression="gzip"), "application/vnd.oci.image.layer.v1.tar+gzip", {})],
    )
    result = cli("ensure", f"oci://{registry.host}/triton/prod:v1", "--json", "--engine", "triton")
    assert result.code == 0, result.stderr
    out = result.json()
    assert out["format"] == "triton" if "format" in out else out["metadata"]["format"] == "triton"
    assert (Path(out["local_path"]) / "pipeline" / "config.pbtxt").is_file()


def test_local_triton_directory_in_place_warm_verify_and_change(cli: Any, tmp_path: Path) -> None:
    repo = write_tree(tmp_path / "model_repository", triton_repo())
    first = cli("ensure", str(repo), "--json", "--engine", "triton", "--handoff-dir", str(tmp_path / "out"))
    assert first.code == 0, first.stderr
    out = first.json()
    assert out["local_path"] == str(repo) and out["metadata"]["layout"] == "triton"
    assert out["digest"] == out["metadata"]["repo_digest"]
    handoff = json.loads((tmp_path / "out/.runtime/engines/triton.json").read_text())
    assert handoff["model_repository"] == str(repo)
    # pinned by its repo digest, answered again without re-hashing, and verify agrees
    assert cli("ensure", str(repo), "--digest", out["digest"], "--json").json()["digest"] == out["digest"]
    assert cli("verify", str(repo), "--json").code == 0
    # an edited file is noticed: strict with the old digest fails, naming both digests
    (repo / "encoder" / "1" / "model.onnx").write_bytes(b"retrained")
    changed = cli("ensure", str(repo), "--digest", out["digest"])
    assert changed.code == 4 and out["digest"] in changed.stderr, changed.stderr
    assert (repo / "encoder" / "1" / "model.onnx").read_bytes() == b"retrained"  # the user's files are untouched


def test_local_directory_symlink_escape_and_plain_dirs(cli: Any, tmp_path: Path) -> None:
    repo = write_tree(tmp_path / "repo", triton_repo())
    (tmp_path / "secret.txt").write_text("outside")
    (repo / "encoder" / "1" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    escaped = cli("ensure", str(repo))
    assert escaped.code == 4 and "outside the directory" in escaped.stderr, escaped.stderr
    plain = write_tree(tmp_path / "notes", {"a.txt": b"x", "b.txt": b"y"})
    result = cli("ensure", str(plain))
    assert result.code == 4 and "no GGUF, safetensors or Triton" in result.stderr, result.stderr


def test_s3_download_killed_midway_resumes_with_a_new_presigned_url(s3: Any, cli: Any, cache_dir: Path) -> None:
    import os

    client = s3_bucket(s3, "models")
    data = os.urandom(24 << 20)
    client.put_object(Bucket="models", Key="big/weights.bin", Body=data, ChecksumAlgorithm="SHA256")
    killed = cli("ensure", "s3://models/big/weights.bin", env={"MODEL_PROVISIONER_FAILPOINTS": "transfer.write=kill@6"})
    assert killed.code == -9, killed.stderr
    kept = sum(p.stat().st_size for p in (cache_dir / "partial").glob("*.part"))
    assert kept > 0
    again = cli("ensure", "s3://models/big/weights.bin", "--json")  # signs a new URL: same partial, resumed
    assert again.code == 0, again.stderr
    out = again.json()
    assert out["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert out["bytes_fetched"] <= len(data) - kept + (1 << 20), (out["bytes_fetched"], kept)


def test_policy_denies_the_s3_endpoint_before_any_request(s3: Any, cli: Any, settings_file: Any) -> None:
    path = settings_file(policy={"deny_hosts": ["127.0.0.1"], "label": "no-loopback"})
    result = cli("ensure", "s3://models/any/m.gguf", env={"MODEL_PROVISIONER_SETTINGS": str(path)})
    assert result.code == 5 and "no-loopback" in result.stderr, result.stderr
    pushed = cli("push", "s3://models/any/m.gguf", "s3://models/mirror/", env={"MODEL_PROVISIONER_SETTINGS": str(path)})
    assert pushed.code in (3, 5), pushed.stderr  # not provisioned (3) or denied (5), never a request


def test_a_file_beside_a_directory_of_the_same_name_is_exit_4(s3: Any, cache_dir: Path) -> None:

    client = s3_bucket(s3, "clash")
    objects = {"m/config.json": b"{}", "m/config.json/x": b"1", "m/model.safetensors": safetensors_bytes(100)}
    for key, body in objects.items():
        client.put_object(Bucket="clash", Key=key, Body=body)
    result = run_cli("ensure", "s3://clash/m/", cache_dir=cache_dir)
    assert result.code == 4 and "both a file and the directory" in result.stderr, result.stderr
    assert run_cli("ls", "--json", cache_dir=cache_dir).json()["models"][0]["lifecycle"] == "Failed"


def test_a_triton_version_directory_named_with_a_superscript_is_not_a_crash(tmp_path: Path, cache_dir: Path) -> None:

    repo = tmp_path / "triton"
    for name, data in triton_repo().items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    (repo / "encoder" / "²").mkdir()
    (repo / "encoder" / "²" / "model.onnx").write_bytes(b"x")
    result = run_cli("ensure", str(repo), "--engine", "triton", "--json", cache_dir=cache_dir)
    assert result.code in (0, 4), result.stderr
    assert "Traceback" not in result.stderr
