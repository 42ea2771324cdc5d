"""Air-gapped bundles (issue 28 item 5): ``export REF… --to DIR|FILE.tar`` writes an OCI image layout,
``import`` verifies every blob, signature and the policy and registers the models under their ids; then
``--offline ensure`` and ``run`` work with no network at all (a network namespace with loopback only)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, run_cli
from .helpers import hub_origin_bytes, transformers_repo
from .test_engine_install import pushed_engine  # noqa: F401  # the fixture: the suite's engine, pushed
from .test_signed_push import _keypair

EXAMPLE = ROOT / "examples" / "tiny-runnable-llama.gguf"


def _layout(bundle: Path) -> dict[str, Any]:
    index: dict[str, Any] = json.loads((bundle / "index.json").read_text())
    return index


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_export_to_a_directory_and_a_tar_imports_offline_under_the_same_ids(
    hub: Any, fileserver: Any, cli: Any, tmp_path: Path, make_gguf: Any
) -> None:
    hub.add_repo("org/bundled", transformers_repo(n_shards=2))
    env = {"HF_ENDPOINT": hub.url}
    url = fileserver.put("gap/m.gguf", make_gguf("gap.gguf").read_bytes())
    pulled = {ref: cli("ensure", ref, "--json", env=env).json() for ref in ("hf:org/bundled", url)}
    directory, tarball = tmp_path / "bundle", tmp_path / "bundle.tar"
    exported = cli("export", "hf:org/bundled", url, "--to", str(directory), "--json", env=env)
    assert exported.code == 0, exported.stderr
    assert exported.json()["bytes_copied"] == 0, "a directory on the cache's filesystem gets hard links"
    assert json.loads((directory / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    names = [m["annotations"].get("org.opencontainers.image.ref.name") for m in _layout(directory)["manifests"]]
    assert [n for n in names if n] == [m["name"] for m in exported.json()["models"]]
    assert cli("export", url, "--to", str(tarball)).code == 0
    assert not tarball.with_name("bundle.tar.partial").exists()
    # the links into the bundle cost the cache nothing: its next answers need no re-hash
    for ref in pulled:
        assert cli("ensure", ref, "--json", env=env).json()["from_cache"], ref
        assert len(cli("inspect", "--json", ref, env=env).json()["verifications"]) == 1, ref

    for bundle in (directory, tarball):
        far = tmp_path / f"far-{bundle.name}"
        hub.cdn.reset()
        hub.server.reset()
        imported = run_cli("--offline", "import", str(bundle), "--json", cache_dir=far)
        assert imported.code == 0, imported.stderr
        assert hub_origin_bytes(hub) == 0 and hub.server.requests == []
        got = {m["id"]: m["digest"] for m in imported.json()["models"]}
        expected = {pulled[r]["id"]: pulled[r]["digest"] for r in pulled if bundle == directory or r == url}
        assert got == expected
        for model_id in got:
            again = run_cli("--offline", "ensure", model_id, "--json", cache_dir=far)
            assert again.code == 0 and again.json()["from_cache"], again.stderr
            assert again.json()["digest"] == got[model_id]
        # importing again changes nothing and fetches nothing
        second = run_cli("--offline", "import", str(bundle), "--json", cache_dir=far)
        assert second.code == 0 and all(m["from_cache"] for m in second.json()["models"]), second.stderr


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_a_tampered_or_planted_bundle_is_refused_and_nothing_is_registered(
    fileserver: Any, cli: Any, tmp_path: Path, make_gguf: Any
) -> None:
    data = make_gguf("tamper.gguf").read_bytes()
    url = fileserver.put("gap/tamper.gguf", data)
    assert cli("ensure", url).code == 0
    bundle = tmp_path / "bundle"
    assert cli("export", url, "--to", str(bundle)).code == 0
    weight = bundle / "blobs" / "sha256" / __import__("hashlib").sha256(data).hexdigest()
    pristine = tmp_path / "pristine"
    shutil.copytree(bundle, pristine)

    weight.unlink()  # break the hard link to the cache's blob before writing other bytes
    weight.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    far = tmp_path / "far"
    refused = run_cli("import", str(bundle), cache_dir=far)
    assert refused.code == 4 and "digest mismatch" in refused.stderr.lower(), refused.stderr
    assert run_cli("ls", "--json", cache_dir=far).json()["models"] == []

    weight.unlink()
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(data)
    weight.symlink_to(outside)  # the right bytes, behind a planted symlink: refused by name
    planted = run_cli("import", str(bundle), cache_dir=far)
    assert planted.code == 4 and "symbolic link" in planted.stderr, planted.stderr
    assert run_cli("ls", "--json", cache_dir=far).json()["models"] == []

    (pristine / "index.json").unlink()
    incomplete = run_cli("import", str(pristine), cache_dir=far)
    assert incomplete.code == 4 and "index.json" in incomplete.stderr, incomplete.stderr
    nothing = run_cli("import", str(tmp_path / "no-such-bundle"), cache_dir=far)
    assert nothing.code == 3 and "no-such-bundle" in nothing.stderr

    # export refuses a non-empty directory and a local file, naming what to do
    taken = cli("export", url, "--to", str(pristine))
    assert taken.code == 2 and "not an empty directory" in taken.stderr
    local = make_gguf("local.gguf")
    assert cli("ensure", str(local)).code == 0
    refused_local = cli("export", str(local), "--to", str(tmp_path / "local-bundle"))
    assert refused_local.code == 2 and "copy it" in refused_local.stderr, refused_local.stderr
    assert not (tmp_path / "local-bundle").exists()


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def _enforce(tmp_path: Path, key: Path) -> dict[str, str]:
    """Settings that enforce signatures by ``key`` (a file of their own)."""
    settings = tmp_path / f"enforce-{key.stem}.json"
    settings.write_text(json.dumps({"signatures": {"policy": "enforce", "keys": [str(key)]}}))
    return {"MODEL_PROVISIONER_SETTINGS": str(settings)}


def test_signatures_travel_in_the_bundle_and_the_far_side_policy_checks_them(
    registry: Any, cli: Any, tmp_path: Path, make_gguf: Any
) -> None:
    private, public = _keypair(tmp_path, "team")
    _, stranger = _keypair(tmp_path, "stranger")
    model = make_gguf("travels.gguf")
    assert cli("ensure", str(model)).code == 0
    ref = f"oci://{registry.host}/team/travels:1"
    assert cli("push", str(model), ref, "--sign", str(private)).code == 0
    policy = _enforce(tmp_path, public)
    near = tmp_path / "near"
    pulled = run_cli("ensure", ref, "--json", cache_dir=near, env=policy)
    assert pulled.code == 0, pulled.stderr
    # the signature it came with is kept in the catalog (it travels), and not shown: its verdict is
    assert "signature_bundles" not in pulled.json()["metadata"] and pulled.json()["metadata"]["signature"]
    assert "signature_bundles" not in run_cli("inspect", "--json", ref, cache_dir=near).json()["metadata"]
    bundle = tmp_path / "signed.tar"
    exported = run_cli("export", ref, "--to", str(bundle), "--json", cache_dir=near, env=policy)
    assert exported.code == 0, exported.stderr
    assert exported.json()["models"][0]["signatures"] == 1 and exported.json()["models"][0]["bom"] is True

    far1 = tmp_path / "far1"
    ok = run_cli("--offline", "import", str(bundle), "--json", cache_dir=far1, env=policy)
    assert ok.code == 0, ok.stderr
    assert ok.json()["models"][0]["signature"].startswith("model-signing, key sha256:")
    # the far side changes its keys: the model is checked again against the signatures it came with, offline
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"signatures": {"policy": "enforce", "keys": [str(public), str(stranger)]}}))
    rechecked = run_cli(
        "--offline", "ensure", ref, "--json", cache_dir=far1, env={"MODEL_PROVISIONER_SETTINGS": str(both)}
    )
    assert rechecked.code == 0, rechecked.stderr
    assert rechecked.json()["metadata"]["signature"].startswith("model-signing, 2 keys")
    warm = run_cli("--offline", "ensure", ref, "--json", cache_dir=far1, env={"MODEL_PROVISIONER_SETTINGS": str(both)})
    assert warm.code == 0 and warm.json()["from_cache"], warm.stderr
    assert len(run_cli("inspect", "--json", ref, cache_dir=far1).json()["verifications"]) == 1, "never re-hashed"
    dropped = run_cli("--offline", "ensure", ref, cache_dir=far1, env=_enforce(tmp_path, stranger))
    assert dropped.code == 4 and "signature verification failed" in dropped.stderr, dropped.stderr
    far2 = tmp_path / "far2"
    refused = run_cli("--offline", "import", str(bundle), cache_dir=far2, env=_enforce(tmp_path, stranger))
    assert refused.code == 4 and "signature verification failed" in refused.stderr, refused.stderr
    assert [m["lifecycle"] for m in run_cli("ls", "--json", cache_dir=far2).json()["models"]] == ["Failed"]

    # an unsigned pull signed at export: the far side's policy verifies the bundle's own signature
    unsigned = make_gguf("signed-at-export.gguf")
    plain = f"oci://{registry.host}/team/plain:1"
    assert cli("ensure", str(unsigned)).code == 0
    assert cli("push", str(unsigned), plain).code == 0
    assert run_cli("ensure", plain, cache_dir=near).code == 0
    signed_here = tmp_path / "signed-here"
    assert run_cli("export", plain, "--to", str(signed_here), "--sign", str(private), cache_dir=near).code == 0
    verified = run_cli("--offline", "import", str(signed_here), "--json", cache_dir=tmp_path / "far3", env=policy)
    assert verified.code == 0, verified.stderr
    assert verified.json()["models"][0]["signature"].startswith("model-signing")


def test_skopeo_copies_the_bundle_into_a_registry_and_the_model_pulls_from_there(
    fileserver: Any, registry: Any, cli: Any, tmp_path: Path, make_gguf: Any
) -> None:
    url = fileserver.put("gap/seed.gguf", make_gguf("seed.gguf").read_bytes())
    pulled = cli("ensure", url, "--json").json()
    bundle = tmp_path / "seed"
    exported = cli("export", url, "--to", str(bundle), "--json")
    assert exported.code == 0, exported.stderr
    name = exported.json()["models"][0]["name"]
    copied = subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{bundle}:{name}", f"docker://{registry.host}/seeded/m:1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert copied.returncode == 0, copied.stderr
    seeded = run_cli("ensure", f"oci://{registry.host}/seeded/m:1", "--json", cache_dir=tmp_path / "seeded")
    assert seeded.code == 0, seeded.stderr
    assert seeded.json()["digest"] == pulled["digest"]


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_a_bundle_with_its_engine_imports_into_an_empty_cache_with_the_network_off_and_serves_tokens(
    pushed_engine: dict[str, Any],  # noqa: F811  # the fixture imported above
    registry: Any,
    fileserver: Any,
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("a network namespace (unshare --net) needs root here")
    team = tmp_path / "team"
    got = run_cli("engines", "install", "llamacpp", "--from", pushed_engine["ref"], cache_dir=team, timeout=120)
    assert got.code == 0, got.stderr
    url = fileserver.put("gap/tiny-runnable-llama.gguf", EXAMPLE.read_bytes())
    assert run_cli("ensure", url, cache_dir=team).code == 0
    bundle = tmp_path / "air-gap.tar"
    exported = run_cli("export", url, "--engine", "--to", str(bundle), "--json", cache_dir=team)
    assert exported.code == 0, exported.stderr
    assert exported.json()["engine"] == pushed_engine["key"]

    far = tmp_path / "far"
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    program = [sys.executable, "-m", "model_provisioner", "--cache-dir", str(far), "--offline"]
    script = " && ".join(
        [
            "ip link set lo up",
            " ".join([*program, "import", str(bundle), "-q"]),
            " ".join([*program, "run", url, "Hi", "--max-tokens", "4"]),
        ]
    )
    # a network namespace with loopback only: any socket to the outside fails
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PATH": f"{empty_bin}:/usr/sbin:/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "streamed tokens on stdout"
    assert "stopped pool" in done.stderr
