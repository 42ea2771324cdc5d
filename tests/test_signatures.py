"""--require-signature: OpenSSF model-signing signatures (key-based) checked before a model is Active."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .helpers import digest_of, sign, triton_repo, write_tree
from .servers.oci_push import push_artifact


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_signed_directory_is_active_tampered_or_unsigned_is_exit_4(
    cli: Any, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    repo = write_tree(tmp_path / "signed-repo", triton_repo())
    flags = ["--require-signature", "--signature-key", str(public)]
    unsigned = cli("ensure", str(repo), *flags)
    assert unsigned.code == 4 and "unsigned" in unsigned.stderr, unsigned.stderr
    sign(repo, private)
    ok = cli("ensure", str(repo), *flags, "--json")
    assert ok.code == 0, ok.stderr
    assert ok.json()["metadata"]["signature"].startswith("model-signing")
    (repo / "encoder" / "1" / "model.onnx").write_bytes(b"swapped weights")
    tampered = cli("ensure", str(repo), *flags)
    assert tampered.code == 4 and "signature verification failed" in tampered.stderr, tampered.stderr
    assert "model.onnx" in tampered.stderr
    listing = cli("ls", "--json").json()
    assert [e["lifecycle"] for e in listing["models"]] == ["Failed"]


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_signed_local_file_and_the_wrong_key(
    cli: Any, gguf_file: Path, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    sign(gguf_file, private)
    assert (gguf_file.parent / "tiny.gguf.sig").is_file()
    ok = cli("ensure", str(gguf_file), "--require-signature", "--signature-key", str(public))
    assert ok.code == 0, ok.stderr
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = tmp_path / "other.pub.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    wrong = cli("ensure", str(gguf_file), "--require-signature", "--signature-key", str(other))
    assert wrong.code == 4 and "signature verification failed" in wrong.stderr, wrong.stderr


def test_required_by_settings_an_earlier_unsigned_copy_is_not_served(
    cli: Any, gguf_file: Path, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    _, public = keys
    assert cli("ensure", str(gguf_file)).code == 0  # provisioned before signatures were required
    settings = tmp_path / "signed.json"
    settings.write_text(json.dumps({"require_signature": True, "signature_public_key": str(public)}))
    result = cli("ensure", str(gguf_file), env={"MODEL_PROVISIONER_SETTINGS": str(settings)})
    assert result.code == 4 and "unsigned" in result.stderr, result.stderr


def test_signed_oci_artifact_and_a_forged_one(
    registry: Any, cli: Any, make_gguf: Any, tmp_path: Path, keys: tuple[Path, Path], cache_dir: Path
) -> None:
    private, public = keys
    model_dir = tmp_path / "publish"
    model_dir.mkdir()
    gguf = Path(make_gguf("signed.gguf")).read_bytes()
    (model_dir / "model.gguf").write_bytes(gguf)
    (model_dir / "LICENSE").write_text("MIT")
    signature = sign(model_dir, private).read_bytes()
    raw = "application/vnd.cncf.model.weight.v1.raw"
    layers = [
        (gguf, raw, {"org.cncf.model.filepath": "model.gguf"}),
        (b"MIT", "application/vnd.cncf.model.doc.v1.raw", {"org.cncf.model.filepath": "LICENSE"}),
        (signature, "application/vnd.cncf.model.doc.v1.raw", {"org.cncf.model.filepath": "model.sig"}),
    ]
    push_artifact(registry.url, "signed/tiny", "v1", layers)
    flags = ["--require-signature", "--signature-key", str(public)]
    ok = cli("ensure", f"oci://{registry.host}/signed/tiny:v1", *flags, "--json")
    assert ok.code == 0, ok.stderr
    assert Path(ok.json()["local_path"]).name == "model.gguf"
    # the same signature shipped with other weights: refused, and no view is left behind
    forged = [(gguf + b"\x00", raw, {"org.cncf.model.filepath": "model.gguf"}), *layers[1:]]
    push_artifact(registry.url, "signed/forged", "v1", forged)
    refused = cli("ensure", f"oci://{registry.host}/signed/forged:v1", *flags)
    assert refused.code == 4 and "signature verification failed" in refused.stderr, refused.stderr
    assert not any("forged" in str(p) for p in (cache_dir / "gguf").rglob("*"))


# ------------------------------------------------------------- 11. signature set-up errors are exit 2
@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
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


def _other_key(tmp_path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = tmp_path / "other.pub.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return other


def test_the_signature_policy_by_scope_warns_enforces_and_checks_again_under_another_key_set(
    cli: Any, make_gguf: Any, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """Issue 28 item 2: signatures.policy with per-scope overrides and a set of trusted keys."""
    private, public = keys
    signed = make_gguf("team/signed.gguf")
    team = signed.parent
    sign(signed, private)
    unsigned_team = make_gguf("team/unsigned.gguf")
    elsewhere = make_gguf("elsewhere.gguf")
    other = _other_key(tmp_path)
    settings = tmp_path / "policy.json"

    def policy(keys_: list[Path]) -> dict[str, str]:
        scopes = {f"file:{team}/*": "enforce", "file:*": "warn"}
        settings.write_text(
            json.dumps({"signatures": {"policy": "off", "keys": [str(k) for k in keys_], "scopes": scopes}})
        )
        return {"MODEL_PROVISIONER_SETTINGS": str(settings)}

    env = policy([other, public])
    assert cli("ensure", str(signed), env=env).code == 0
    refused = cli("ensure", str(unsigned_team), env=env)
    assert refused.code == 4 and "unsigned" in refused.stderr and f"scope 'file:{team}/*'" in refused.stderr
    warned = cli("ensure", str(elsewhere), env=env)
    assert warned.code == 0 and "signatures: warn" in warned.stderr, warned.stderr
    assert cli("inspect", "--json", str(elsewhere)).json()["metadata"]["signature"] == "not verified (unsigned)"
    first = cli("inspect", "--json", str(signed)).json()["metadata"]["signature"]
    assert first.startswith("model-signing, 2 keys")
    # another key set: the entry is checked again (and recorded under it) before it is served
    again = cli("ensure", str(signed), "--json", env=policy([public]))
    assert again.code == 0 and again.json()["metadata"]["signature"].startswith("model-signing, key sha256:")
    # a key set that does not hold the signer's key: refused under enforce
    wrong = cli("ensure", str(signed), env=policy([other]))
    assert wrong.code == 4 and "signature verification failed" in wrong.stderr, wrong.stderr
    # up refuses what the policy rejects, before any engine is looked for
    up = cli("up", str(unsigned_team), "--binary", str(tmp_path / "no-engine"), env=policy([public]))
    assert up.code == 4 and "unsigned" in up.stderr, up.stderr


def test_a_remote_model_under_warn_stays_usable_when_unsigned(
    fileserver: Any, cli: Any, tmp_path: Path, keys: tuple[Path, Path], settings_file: Any
) -> None:
    """Under warn a failed check is recorded, and nothing of the provisioned model is taken away."""
    _, public = keys
    url = fileserver.put("warn/m.bin", Path(__file__).read_bytes())
    settings = settings_file(signatures={"policy": "warn", "keys": [str(public)]})
    done = cli("ensure", url, "--json", env={"MODEL_PROVISIONER_SETTINGS": str(settings)})
    assert done.code == 0, done.stderr
    assert Path(done.json()["local_path"]).read_bytes() == Path(__file__).read_bytes()
    assert done.json()["metadata"]["signature"] == "not verified (unsigned)"
