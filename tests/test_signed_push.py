"""push --sign (issue 28 item 1): a model-signing signature published with the artifact (OCI: an artifact whose
subject is the model's manifest, found through the referrers tag on a registry without the referrers API; S3:
beside the files) and checked on pull under the signature policy."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import run_cli
from .servers.oci_push import sha, upload

BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _keypair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def _pull(ref: str, cache: Path, settings_file: Any, mode: str, public: Path, *extra: str) -> Any:
    settings = settings_file(signatures={"policy": mode, "keys": [str(public)]})
    return run_cli("ensure", ref, "--json", *extra, cache_dir=cache, env={"MODEL_PROVISIONER_SETTINGS": str(settings)})


def _referrers(registry: Any, repo: str, digest: str) -> list[dict[str, Any]]:
    tag = digest.replace(":", "-")
    response = httpx.get(f"{registry.url}/v2/{repo}/manifests/{tag}", headers={"Accept": INDEX})
    assert response.status_code == 200, response.text
    manifests: list[dict[str, Any]] = response.json()["manifests"]
    return manifests


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_signed_push_verifies_on_pull_another_key_is_refused_or_warned_and_a_tampered_one_is_exit_4(
    registry: Any, cli: Any, make_gguf: Any, tmp_path: Path, settings_file: Any
) -> None:
    team_private, team_public = _keypair(tmp_path, "team")
    other_private, _ = _keypair(tmp_path, "other")
    model = make_gguf("signed-push.gguf")
    assert cli("ensure", str(model)).code == 0
    pushed = cli("push", str(model), f"oci://{registry.host}/team/signed:1", "--sign", str(team_private), "--json")
    assert pushed.code == 0, pushed.stderr
    result = pushed.json()
    # signing read the user's file through a link of its own: the file and its entry are untouched
    assert len(cli("inspect", "--json", str(model)).json()["verifications"]) == 1
    # the registry has no referrers API: the signature is listed under the referrers tag sha256-<hex>
    listed = _referrers(registry, "team/signed", result["manifest_digest"])
    assert [(m["digest"], m["artifactType"]) for m in listed] == [(result["signature"], BUNDLE)]
    referrer = httpx.get(f"{registry.url}/v2/team/signed/manifests/{result['signature']}", headers={"Accept": MANIFEST})
    assert referrer.json()["subject"]["digest"] == result["manifest_digest"]

    ok = _pull(f"oci://{registry.host}/team/signed:1", tmp_path / "c1", settings_file, "enforce", team_public)
    assert ok.code == 0, ok.stderr
    assert ok.json()["metadata"]["signature"].startswith("model-signing, key sha256:")
    assert Path(ok.json()["local_path"]).read_bytes() == model.read_bytes()

    # the same artifact re-signed with another key (published elsewhere): refused under enforce, warned under warn
    resigned = cli("push", str(model), f"oci://{registry.host}/elsewhere/signed:1", "--sign", str(other_private))
    assert resigned.code == 0, resigned.stderr
    ref = f"oci://{registry.host}/elsewhere/signed:1"
    refused = _pull(ref, tmp_path / "c2", settings_file, "enforce", team_public)
    assert refused.code == 4, refused.stderr
    assert "signature verification failed" in refused.stderr and "signatures: enforce" in refused.stderr
    listing = run_cli("ls", "--json", cache_dir=tmp_path / "c2").json()
    assert [m["lifecycle"] for m in listing["models"]] == ["Failed"]
    warned = _pull(ref, tmp_path / "c3", settings_file, "warn", team_public)
    assert warned.code == 0, warned.stderr
    assert warned.json()["metadata"]["signature"] == "not verified (signature)"

    # a tampered signature: someone with push access swaps the published bundle for an edited one
    bundle_desc = httpx.get(
        f"{registry.url}/v2/team/signed/manifests/{result['signature']}", headers={"Accept": MANIFEST}
    ).json()["layers"][0]
    bundle = json.loads(httpx.get(f"{registry.url}/v2/team/signed/blobs/{bundle_desc['digest']}").content)
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    resource = statement["predicate"]["resources"][0]
    resource["digest"] = "0" * len(resource["digest"])
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    forged = json.dumps(bundle).encode()
    subject = {"mediaType": MANIFEST, "digest": result["manifest_digest"], "size": referrer.json()["subject"]["size"]}
    empty = upload(registry.url, "team/signed", b"{}")
    layer = {"mediaType": BUNDLE, **upload(registry.url, "team/signed", forged)}
    artifact = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": BUNDLE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", **empty},
        "layers": [layer],
        "subject": subject,
    }
    raw = json.dumps(artifact).encode()
    put = httpx.put(
        f"{registry.url}/v2/team/signed/manifests/{sha(raw)}", content=raw, headers={"Content-Type": MANIFEST}
    )
    assert put.status_code == 201, put.text
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [{"mediaType": MANIFEST, "digest": sha(raw), "size": len(raw), "artifactType": BUNDLE}],
    }
    tag = result["manifest_digest"].replace(":", "-")
    put = httpx.put(
        f"{registry.url}/v2/team/signed/manifests/{tag}",
        content=json.dumps(index).encode(),
        headers={"Content-Type": INDEX},
    )
    assert put.status_code == 201, put.text
    tampered = _pull(f"oci://{registry.host}/team/signed:1", tmp_path / "c4", settings_file, "enforce", team_public)
    assert tampered.code == 4 and "signature verification failed" in tampered.stderr, tampered.stderr


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_signed_image_push_and_signed_s3_mirror_verify_on_pull(
    registry: Any, s3: Any, fileserver: Any, cli: Any, make_gguf: Any, tmp_path: Path, settings_file: Any
) -> None:
    private, public = _keypair(tmp_path, "team")
    model = make_gguf("signed-image.gguf")
    assert cli("ensure", str(model)).code == 0
    image = cli(
        "push", str(model), f"oci://{registry.host}/team/image:1", "--as-image", "--sign", str(private), "--json"
    )
    assert image.code == 0, image.stderr
    assert _referrers(registry, "team/image", image.json()["manifest_digest"])[0]["artifactType"] == BUNDLE
    pulled = _pull(f"oci://{registry.host}/team/image:1", tmp_path / "c1", settings_file, "enforce", public)
    assert pulled.code == 0, pulled.stderr
    assert pulled.json()["metadata"]["signature"].startswith("model-signing")

    s3.client().create_bucket(Bucket="signed-mirror")
    url = fileserver.put("signed/m.gguf", model.read_bytes())
    assert cli("ensure", url).code == 0
    to_s3 = cli("push", url, "s3://signed-mirror/models/", "--sign", str(private), "--json")
    assert to_s3.code == 0, to_s3.stderr
    assert to_s3.json()["signature"].endswith("/model-provisioner.sig")
    mirror = settings_file(
        mirrors={"models": ["s3://signed-mirror/models/"]},
        signatures={"policy": "enforce", "keys": [str(public)]},
    )
    cache = tmp_path / "c2"
    done = run_cli("ensure", url, "--json", cache_dir=cache, env={"MODEL_PROVISIONER_SETTINGS": str(mirror)})
    assert done.code == 0, done.stderr
    assert done.json()["metadata"]["mirror"].startswith("s3://signed-mirror/models/")
    assert done.json()["metadata"]["signature"].startswith("model-signing")


def test_sign_setup_errors_are_exit_2_and_push_nothing(registry: Any, cli: Any, make_gguf: Any, tmp_path: Path) -> None:
    model = make_gguf("unsigned-push.gguf")
    assert cli("ensure", str(model)).code == 0
    missing = cli("push", str(model), f"oci://{registry.host}/team/nokey:1", "--sign", str(tmp_path / "no.pem"))
    assert missing.code == 2 and "no.pem" in missing.stderr and "cannot be read" in missing.stderr, missing.stderr
    both = cli("push", str(model), f"oci://{registry.host}/team/nokey:1", "--sign", "a", "--sign-cert", "b,c")
    assert both.code == 2 and "not both" in both.stderr
    assert httpx.get(f"{registry.url}/v2/team/nokey/tags/list").status_code == 404


def _certificates(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA and a code-signing certificate it issued: (CA cert, signing cert, signing key), PEM."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def usage(*, ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(True, False, False, False, False, ca, ca, False, False)

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    validity = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    serial = x509.random_serial_number
    ca = (
        x509.CertificateBuilder(name("Test CA"), name("Test CA"), ca_key.public_key(), serial(), *validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder(ca.subject, name("team signer"), key.public_key(), serial(), *validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (tmp_path / "ca.pem", tmp_path / "signer.crt", tmp_path / "signer.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def test_a_push_signed_by_certificate_verifies_against_the_trusted_ca(
    registry: Any, cli: Any, make_gguf: Any, tmp_path: Path, settings_file: Any
) -> None:
    ca, cert, key = _certificates(tmp_path)
    _, unrelated = _keypair(tmp_path, "unrelated")
    model = make_gguf("cert-signed.gguf")
    assert cli("ensure", str(model)).code == 0
    short = cli("push", str(model), f"oci://{registry.host}/team/cert:1", "--sign-cert", f"{cert},{key}")
    assert short.code == 2 and "CERT,KEY,CA" in short.stderr, short.stderr
    pushed = cli("push", str(model), f"oci://{registry.host}/team/cert:1", "--sign-cert", f"{cert},{key},{ca}")
    assert pushed.code == 0, pushed.stderr
    ref = f"oci://{registry.host}/team/cert:1"
    ok = _pull(ref, tmp_path / "c1", settings_file, "enforce", ca)
    assert ok.code == 0, ok.stderr
    assert ok.json()["metadata"]["signature"].startswith("model-signing, key sha256:")
    refused = _pull(ref, tmp_path / "c2", settings_file, "enforce", unrelated)
    assert refused.code == 4 and "signature verification failed" in refused.stderr, refused.stderr


def test_the_api_and_the_gateway_answer_403_for_a_model_the_signature_policy_refuses(
    api_factory: Any, registry: Any, cli: Any, make_gguf: Any, tmp_path: Path
) -> None:
    private, public = _keypair(tmp_path, "team")
    _, stranger = _keypair(tmp_path, "stranger")
    model = make_gguf("policy-403.gguf")
    assert cli("ensure", str(model)).code == 0
    ref = f"oci://{registry.host}/team/policy:1"
    assert cli("push", str(model), ref, "--sign", str(private)).code == 0
    api = api_factory(settings={"signatures": {"policy": "enforce", "keys": [str(stranger)]}})
    refused = api.client.post("/v1/models/ensure", json={"ref": ref})
    assert refused.status_code == 403, refused.text
    message = refused.json()["error"]["message"]
    assert ref in message and "signatures: enforce" in message and "signature verification failed" in message
    chat = api.client.post("/v1/chat/completions", json={"model": ref, "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 403, chat.text
    trusted = api_factory(settings={"signatures": {"policy": "enforce", "keys": [str(public)]}})
    assert trusted.client.post("/v1/models/ensure", json={"ref": ref}).status_code == 200


def test_a_registry_with_the_referrers_api_is_used_through_it(
    registry: Any, cli: Any, make_gguf: Any, tmp_path: Path, settings_file: Any
) -> None:
    """Where the registry has the referrers API (it answers OCI-Subject), no referrers tag is written or read."""
    from .servers.referrers import ReferrersRegistry

    front = ReferrersRegistry(registry.url)
    try:
        private, public = _keypair(tmp_path, "team")
        model = make_gguf("referrers-api.gguf")
        assert cli("ensure", str(model)).code == 0
        ref = f"oci://{front.host}/api/signed:1"
        pushed = cli("push", str(model), ref, "--sign", str(private), "--json")
        assert pushed.code == 0, pushed.stderr
        subject = pushed.json()["manifest_digest"]
        assert [d["digest"] for d in front.referrers[("api/signed", subject)]] == [pushed.json()["signature"]]
        tag = subject.replace(":", "-")
        assert httpx.get(f"{registry.url}/v2/api/signed/manifests/{tag}").status_code == 404, "no fallback tag"
        pulled = _pull(ref, tmp_path / "c1", settings_file, "enforce", public)
        assert pulled.code == 0, pulled.stderr
        assert pulled.json()["metadata"]["signature"].startswith("model-signing")
        assert front.requests["referrers"] == 1 and front.requests["referrers-tag"] == 0
    finally:
        front.close()
