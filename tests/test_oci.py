"""oci:// refs against Debian's docker-registry: media-type families, tags and digests, auth, corruption,
traversal. Artifacts are pushed with plain httpx (tests/servers/oci_push.py) or with ORAS (oras-py)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import REGISTRY_PASSWORD, REGISTRY_USER
from .helpers import MODELPACK_CONFIG, safetensors_bytes, wait_for
from .servers.oci_push import push_artifact, sha, tar_bytes

MP_RAW = "application/vnd.cncf.model.weight.v1.raw"


@pytest.fixture
def gguf_bytes(make_gguf: Any) -> bytes:
    return Path(make_gguf("oci.gguf", context_length=2048)).read_bytes()


def _modelpack_gguf(registry: Any, repo: str, data: bytes, tag: str = "v1", **kw: Any) -> str:
    config = json.dumps({"config": {"format": "gguf", "quantization": "Q4_K_M"}, "modelfs": {"type": "layers"}})
    return push_artifact(
        registry.url,
        repo,
        tag,
        [(data, MP_RAW, {"org.cncf.model.filepath": "tiny-q4.gguf"})],
        config=(config.encode(), MODELPACK_CONFIG),
        artifact_type="application/vnd.cncf.model.manifest.v1+json",
        **kw,
    )


def test_modelpack_gguf_by_tag_then_warm_and_offline(registry: Any, cli: Any, gguf_bytes: bytes) -> None:
    manifest_digest = _modelpack_gguf(registry, "team/tiny", gguf_bytes)
    ref = f"oci://{registry.host}/team/tiny:v1"
    first = cli("ensure", ref, "--json")
    assert first.code == 0, first.stderr
    out = first.json()
    assert out["digest"] == sha(gguf_bytes)
    assert out["lifecycle"] == "Active"
    assert Path(out["local_path"]).read_bytes() == gguf_bytes
    assert "/gguf/" in out["local_path"] and out["local_path"].endswith(".gguf@" + sha(gguf_bytes)[7:])
    oci = out["metadata"]["oci"]
    assert oci["manifest_digest"] == manifest_digest  # the tag was pinned to this manifest
    assert oci["family"] == "modelpack" and oci["config"]["quantization"] == "Q4_K_M"
    assert out["metadata"]["ctx_max"] == 2048
    # warm and offline: answered from the catalog
    again = cli("--offline", "ensure", ref, "--json")
    assert again.code == 0, again.stderr
    assert again.json()["local_path"] == out["local_path"]


def test_pull_by_digest_and_unknown_tag(registry: Any, cli: Any, gguf_bytes: bytes) -> None:
    digest = _modelpack_gguf(registry, "team/bydigest", gguf_bytes)
    result = cli("ensure", f"oci://{registry.host}/team/bydigest@{digest}", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["metadata"]["oci"]["manifest_digest"] == digest
    missing = cli("ensure", f"oci://{registry.host}/team/bydigest:nope")
    assert missing.code == 3
    assert "nope" in missing.stderr and registry.host in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize("compression", ["tar", "gzip", "zstd"])
def test_modelpack_tar_layers_give_a_transformers_view(registry: Any, cli: Any, compression: str) -> None:
    files = {
        "config.json": json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}).encode(),
        "model.safetensors": safetensors_bytes(2000, seed=3),
        "tokenizer.json": b'{"version": "1.0"}',
    }
    media = {
        "tar": "application/vnd.cncf.model.weight.v1.tar",
        "gzip": "application/vnd.cncf.model.weight.v1.tar+gzip",
        "zstd": "application/vnd.cnai.model.weight.v1.tar+zstd",
    }[compression]  # older cnai name too
    layer = tar_bytes(files, compression=compression)
    push_artifact(
        registry.url,
        f"team/tf-{compression}",
        "v1",
        [(layer, media, {})],
        config=(b'{"config": {"format": "safetensors"}}', MODELPACK_CONFIG),
    )
    result = cli("ensure", f"oci://{registry.host}/team/tf-{compression}:v1", "--json")
    assert result.code == 0, result.stderr
    out = result.json()
    assert out["metadata"]["layout"] == "transformers"
    view = Path(out["local_path"])
    assert "/transformers/" in str(view)
    for name, data in files.items():
        assert (view / name).read_bytes() == data
    assert out["metadata"]["model_type"] == "llama"


def test_a_tar_layer_shared_by_two_models_is_fetched_once(registry: Any, cli: Any) -> None:
    """The archive is dropped after unpacking, but what it held is remembered: a second model with the
    same layer (another tag, another quantization sharing the tokenizer layer) is laid out from the
    store. gc forgets the record once the files are gone, and the layer is fetched again when needed."""
    shared = tar_bytes({"tokenizer.json": b'{"version": "1.0"}', "tokenizer_config.json": b"{}"}, compression="gzip")
    shared_digest = sha(shared)
    media = "application/vnd.cncf.model.weight.v1.tar+gzip"
    refs = []
    for seed in (1, 2):
        weights = tar_bytes(
            {
                "config.json": json.dumps({"model_type": "llama", "seed": seed}).encode(),
                "model.safetensors": safetensors_bytes(3000, seed=seed),
            },
            compression="gzip",
        )
        push_artifact(
            registry.url,
            f"team/shared-{seed}",
            "v1",
            [(weights, media, {}), (shared, media, {})],
            config=(b'{"config": {"format": "safetensors"}}', MODELPACK_CONFIG),
        )
        refs.append(f"oci://{registry.host}/team/shared-{seed}:v1")

    first = cli("ensure", refs[0], "--json")
    assert first.code == 0, first.stderr
    second = cli("ensure", refs[1], "--json")
    assert second.code == 0, second.stderr
    assert registry.blob_gets(shared_digest) == 1  # the second model's copy came from the store
    for out in (first.json(), second.json()):
        assert (Path(out["local_path"]) / "tokenizer.json").read_bytes() == b'{"version": "1.0"}'
    assert cli("verify", second.json()["id"]).code == 0

    # the first model goes; the second still holds the files: the record stays and serves a re-pull
    assert cli("rm", first.json()["id"]).code == 0
    assert cli("gc").code == 0
    again = cli("ensure", refs[0], "--json")
    assert again.code == 0, again.stderr
    assert registry.blob_gets(shared_digest) == 1

    # both go: gc takes the files and the record with them; the next pull fetches the layer again
    assert cli("rm", first.json()["id"]).code == 0 and cli("rm", second.json()["id"]).code == 0
    gc = cli("gc", "--json")
    assert gc.code == 0, gc.stderr
    assert shared_digest.split(":")[1] in gc.stdout  # the layer record is forgotten
    last = cli("ensure", refs[1], "--json")
    assert last.code == 0, last.stderr
    assert registry.blob_gets(shared_digest) == 2
    assert (Path(last.json()["local_path"]) / "tokenizer_config.json").read_bytes() == b"{}"


def test_docker_model_runner_artifact(registry: Any, cli: Any, gguf_bytes: bytes) -> None:
    push_artifact(
        registry.url,
        "ai/tiny",
        "latest",
        [
            (gguf_bytes, "application/vnd.docker.ai.gguf.v3", {}),
            (b"Apache-2.0 text", "application/vnd.docker.ai.license", {}),
        ],
        config=(
            b'{"config": {"format": "gguf", "quantization": "Q4_0", "context_size": 2048}}',
            "application/vnd.docker.ai.model.config.v0.1+json",
        ),
        media_type="application/vnd.docker.distribution.manifest.v2+json",
    )
    result = cli("ensure", f"oci://{registry.host}/ai/tiny", "--json")  # no tag means latest
    assert result.code == 0, result.stderr
    out = result.json()
    assert out["metadata"]["oci"]["family"] == "docker-model"
    path = Path(out["local_path"])
    assert path.name == "model.gguf" and path.read_bytes() == gguf_bytes
    assert (path.parent / "LICENSE").read_text() == "Apache-2.0 text"
    assert out["metadata"]["ctx_max"] == 2048


def test_oras_artifact_pushed_by_oras_py(registry: Any, cli: Any, gguf_bytes: bytes, tmp_path: Path) -> None:
    import oras.client

    (tmp_path / "up").mkdir()
    model = tmp_path / "up" / "tiny.gguf"
    model.write_bytes(gguf_bytes)
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path / "up")
    try:
        client.push(target=f"{registry.host}/oras/tiny:v1", files=["tiny.gguf"], disable_path_validation=True)
    finally:
        os.chdir(cwd)
    result = cli("ensure", f"oci://{registry.host}/oras/tiny:v1", "--json")
    assert result.code == 0, result.stderr
    out = result.json()
    assert out["metadata"]["oci"]["family"] == "oras"
    assert Path(out["local_path"]).read_bytes() == gguf_bytes


def test_corrupted_blob_in_registry_fails_strict(registry: Any, cli: Any, make_gguf: Any, cache_dir: Path) -> None:
    data = Path(make_gguf("corrupt.gguf", context_length=512)).read_bytes()
    _modelpack_gguf(registry, "team/corrupt", data)
    blob = registry.blob_path(sha(data))
    damaged = bytearray(blob.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(damaged))
    result = cli("ensure", f"oci://{registry.host}/team/corrupt:v1")
    assert result.code == 4, result.stderr
    assert sha(data) in result.stderr  # names the expected digest
    assert not list((cache_dir / "blobs" / "sha256").iterdir())
    assert not (cache_dir / "gguf").exists() or not any((cache_dir / "gguf").rglob("*.gguf*"))
    listing = cli("ls", "--json").json()
    assert [e["lifecycle"] for e in listing["models"]] == ["Failed"]


@pytest.mark.parametrize(
    "layers",
    [
        [(b"x", MP_RAW, {"org.cncf.model.filepath": "../evil.gguf"})],
        [(b"x", MP_RAW, {"org.opencontainers.image.title": "/etc/evil"})],
        [(tar_bytes({"../../escape.txt": b"x"}), "application/vnd.cncf.model.weight.v1.tar", {})],
        [(tar_bytes({"/abs.txt": b"x"}, compression="gzip"), "application/vnd.oci.image.layer.v1.tar+gzip", {})],
        [
            (
                tar_bytes({"a.txt": b"x"}, links={"link": ("../../../etc/passwd", True)}),
                "application/vnd.cncf.model.weight.v1.tar",
                {},
            )
        ],
        [
            (
                tar_bytes({"a.txt": b"x"}, links={"hard": ("/etc/passwd", False)}),
                "application/vnd.cncf.model.weight.v1.tar",
                {},
            )
        ],
    ],
    ids=["annotation-dotdot", "annotation-absolute", "tar-dotdot", "tar-absolute", "symlink-out", "hardlink-out"],
)
def test_traversal_in_annotations_and_tar_members_is_refused(
    registry: Any, cli: Any, cache_dir: Path, layers: Any, request: pytest.FixtureRequest
) -> None:
    repo = "evil/" + request.node.callspec.id
    push_artifact(registry.url, repo, "v1", layers)
    result = cli("ensure", f"oci://{registry.host}/{repo}:v1")
    assert result.code == 4, result.stderr
    assert "refused" in result.stderr and "Traceback" not in result.stderr
    # nothing escaped: no file outside the cache, no view
    assert not (cache_dir.parent / "evil.gguf").exists() and not (cache_dir.parent / "escape.txt").exists()
    views = [
        p
        for p in cache_dir.rglob("*")
        if p.is_file()
        and "blobs" not in p.parts
        and "locks" not in p.parts
        and p.name != "catalog.db"
        and not p.name.startswith("catalog.db")
    ]
    assert views == [], views


def _pushing_with_a_token(tokens: Any) -> Any:
    """httpx auth for the test's own pushes to the token-auth registry: a push token for the repository
    each request names, from the token service with the test user's password."""
    import httpx

    def bearer(request: httpx.Request) -> httpx.Request:
        repository = "/".join(request.url.path.split("/")[2:4])
        token = httpx.get(
            tokens.realm,
            params={"service": "mprov-test-registry", "scope": f"repository:{repository}:pull,push"},
            auth=(REGISTRY_USER, REGISTRY_PASSWORD),
        ).json()["token"]
        request.headers["Authorization"] = f"Bearer {token}"
        return request

    return bearer


def _docker_config(home: Path, host: str, user: str, password: str) -> None:
    (home / ".docker").mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (home / ".docker" / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))


def test_basic_auth_registry(registry_auth: Any, cli: Any, gguf_bytes: bytes, tmp_path: Path, cache_dir: Path) -> None:
    import httpx

    _modelpack_gguf(registry_auth, "private/tiny", gguf_bytes, auth=httpx.BasicAuth(REGISTRY_USER, REGISTRY_PASSWORD))
    ref = f"oci://{registry_auth.host}/private/tiny:v1"
    anonymous = cli("ensure", ref)
    assert anonymous.code == 5, anonymous.stderr
    assert registry_auth.host in anonymous.stderr and "docker login" in anonymous.stderr

    home = tmp_path / "home"
    _docker_config(home, registry_auth.host, REGISTRY_USER, "wrong-password")
    wrong = cli("ensure", ref)
    assert wrong.code == 5 and "refused" in wrong.stderr, wrong.stderr

    _docker_config(home, registry_auth.host, REGISTRY_USER, REGISTRY_PASSWORD)
    ok = cli("ensure", ref, "--json")
    assert ok.code == 0, ok.stderr
    # the password never reaches output, the catalog or the logs
    leaked = [ok.stdout, ok.stderr, wrong.stderr, anonymous.stderr]
    leaked += [p.read_bytes().decode("latin-1") for p in cache_dir.rglob("catalog.db*")]
    assert not any(REGISTRY_PASSWORD in text or "wrong-password" in text for text in leaked)
    assert not any(base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode() in t for t in leaked)


HELPER = """#!{python}
# a Docker credential helper (the docker-credential-* protocol): `get` reads a server URL on stdin
import json, pathlib, sys
here = pathlib.Path(__file__).parent
server = sys.stdin.read().strip()
with open(here / "asked.log", "a") as log:
    log.write(sys.argv[1] + " " + server + "\\n")
store = json.loads((here / "store.json").read_text())
if sys.argv[1] != "get" or server not in store:
    print("credentials not found in native keychain")
    sys.exit(1)
if store[server] == "locked":
    print("error: the keychain is locked", file=sys.stderr)
    sys.exit(3)
print(json.dumps({{"ServerURL": server, "Username": store[server][0], "Secret": store[server][1]}}))
"""


def _credential_helper(bin_dir: Path, name: str, store: dict[str, Any]) -> Path:
    """Install docker-credential-<name> in ``bin_dir``; returns its log of what it was asked."""
    import sys

    bin_dir.mkdir(parents=True, exist_ok=True)
    helper = bin_dir / f"docker-credential-{name}"
    helper.write_text(HELPER.format(python=sys.executable))
    helper.chmod(0o755)
    (bin_dir / "store.json").write_text(json.dumps(store))
    return bin_dir / "asked.log"


def test_logins_from_credential_helpers_and_the_credential_store(
    registry_auth: Any, registry_token: Any, cli: Any, gguf_bytes: bytes, tmp_path: Path, cache_dir: Path
) -> None:
    """Docker's order: credHelpers[host], then credsStore, then auths. A helper's `<token>` login is an
    identity token, exchanged at the token realm by OAuth2 POST; helpers run only when a registry asks."""
    import os

    import httpx

    _modelpack_gguf(registry_auth, "private/helper", gguf_bytes, auth=httpx.BasicAuth(REGISTRY_USER, REGISTRY_PASSWORD))
    tokens = registry_token.tokens

    _modelpack_gguf(registry_token, "private/store", gguf_bytes, auth=_pushing_with_a_token(tokens))
    identity_token = "refresh-9f2c6e0d1b7a4e55"
    tokens.refresh_tokens[identity_token] = REGISTRY_USER
    bin_dir = tmp_path / "helpers"
    asked = _credential_helper(
        bin_dir,
        "mprovtest",
        {
            registry_auth.host: (REGISTRY_USER, REGISTRY_PASSWORD),
            registry_token.host: ("<token>", identity_token),
        },
    )
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    docker = tmp_path / "home" / ".docker"
    docker.mkdir(parents=True, exist_ok=True)
    # the auths entry for the Basic registry holds a wrong password: the helper named for the host wins
    wrong = base64.b64encode(f"{REGISTRY_USER}:wrong".encode()).decode()
    (docker / "config.json").write_text(
        json.dumps(
            {
                "auths": {registry_auth.host: {"auth": wrong}},
                "credHelpers": {registry_auth.host: "mprovtest"},
                "credsStore": "mprovtest",
            }
        )
    )

    basic = cli("ensure", f"oci://{registry_auth.host}/private/helper:v1", "--json", env=env)
    assert basic.code == 0, basic.stderr
    assert Path(basic.json()["local_path"]).read_bytes() == gguf_bytes
    assert asked.read_text().splitlines() == [f"get {registry_auth.host}"]

    tokens.issued.clear()
    stored = cli("ensure", f"oci://{registry_token.host}/private/store:v1", "--json", env=env)
    assert stored.code == 0, stored.stderr
    # by POST with the identity token; then one anonymous token, asked once to learn that the repository is
    # private (the entry is marked restricted: docs/kserve.md)
    assert [t["user"] for t in tokens.issued] == [REGISTRY_USER, None]
    assert asked.read_text().splitlines()[-1] == f"get {registry_token.host}"

    # warm, on a private entry: the helper runs once (the caller's credentials are checked against the
    # registry's answer, remembered for access_check_ttl_s), never more
    before = asked.read_text().splitlines()
    assert cli("ensure", f"oci://{registry_token.host}/private/store:v1", env=env).code == 0
    assert asked.read_text().splitlines() == [*before, f"get {registry_token.host}"]

    # an identity token the token service does not know: refused, exit 5, naming where the login came from
    tokens.refresh_tokens.clear()
    revoked = cli("ensure", f"oci://{registry_token.host}/private/store:v1", "--refresh", env=env)
    assert revoked.code == 5, revoked.stderr
    assert "docker-credential-mprovtest" in revoked.stderr and registry_token.host in revoked.stderr

    # the helper has no login for this host: anonymous, refused with the registry named (exit 5)
    (bin_dir / "store.json").write_text("{}")
    (docker / "config.json").write_text(json.dumps({"credsStore": "mprovtest"}))
    anonymous = cli("ensure", f"oci://{registry_auth.host}/private/helper:v1", "--refresh", env=env)
    assert anonymous.code == 5 and registry_auth.host in anonymous.stderr, anonymous.stderr

    # a helper that fails: exit 5 with its own words and its name
    (bin_dir / "store.json").write_text(json.dumps({registry_auth.host: "locked"}))
    locked = cli("ensure", f"oci://{registry_auth.host}/private/helper:v1", "--refresh", env=env)
    assert locked.code == 5, locked.stderr
    assert "docker-credential-mprovtest" in locked.stderr and "keychain is locked" in locked.stderr

    # a helper that is not installed: exit 2, naming the helper and the config file
    (docker / "config.json").write_text(json.dumps({"credHelpers": {registry_auth.host: "nosuch"}}))
    missing = cli("ensure", f"oci://{registry_auth.host}/private/helper:v1", "--refresh", env=env)
    assert missing.code == 2, missing.stderr
    assert "docker-credential-nosuch" in missing.stderr and "config.json" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1

    texts = [r.stdout + r.stderr for r in (basic, stored, revoked, anonymous, locked, missing)]
    texts += [p.read_bytes().decode("latin-1") for p in cache_dir.rglob("*") if p.is_file()]
    assert not any(identity_token in t or REGISTRY_PASSWORD in t for t in texts)


def test_credentials_from_settings_file(registry_auth: Any, cli: Any, gguf_bytes: bytes, settings_file: Any) -> None:
    import httpx

    _modelpack_gguf(
        registry_auth, "private/settings", gguf_bytes, auth=httpx.BasicAuth(REGISTRY_USER, REGISTRY_PASSWORD)
    )
    path = settings_file(
        oci_credentials={registry_auth.host: {"username": REGISTRY_USER, "password": REGISTRY_PASSWORD}}
    )
    result = cli(
        "ensure",
        f"oci://{registry_auth.host}/private/settings:v1",
        "--json",
        env={"MODEL_PROVISIONER_SETTINGS": str(path)},
    )
    assert result.code == 0, result.stderr


def test_policy_denies_registry_host_before_connecting(fileserver: Any, cli: Any, settings_file: Any) -> None:
    # the fault server stands in for a registry: it must not see a single request
    host = fileserver.url.split("://")[1]
    path = settings_file(policy={"deny_hosts": ["127.0.0.1"], "label": "no-loopback"})
    result = cli("ensure", f"oci://{host}/team/tiny:v1", env={"MODEL_PROVISIONER_SETTINGS": str(path)})
    assert result.code == 5 and "no-loopback" in result.stderr, result.stderr
    assert fileserver.requests == []


def test_index_resolves_to_its_model_manifest(registry: Any, cli: Any, gguf_bytes: bytes) -> None:
    import httpx

    inner = _modelpack_gguf(registry, "team/indexed", gguf_bytes, tag="inner")
    raw_inner = httpx.get(
        f"{registry.url}/v2/team/indexed/manifests/{inner}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).content
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": inner,
                "size": len(raw_inner),
                "artifactType": "application/vnd.cncf.model.manifest.v1+json",
            }
        ],
    }
    raw = json.dumps(index).encode()
    put = httpx.put(
        f"{registry.url}/v2/team/indexed/manifests/multi",
        content=raw,
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
    )
    assert put.status_code == 201, put.text
    result = cli("ensure", f"oci://{registry.host}/team/indexed:multi", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["metadata"]["oci"]["manifest_digest"] == inner
    assert hashlib.sha256(Path(result.json()["local_path"]).read_bytes()).hexdigest() == sha(gguf_bytes)[7:]


def test_bearer_token_auth_with_the_realm_on_another_host(
    registry_token: Any, cli: Any, gguf_bytes: bytes, tmp_path: Path, cache_dir: Path
) -> None:

    tokens = registry_token.tokens
    _modelpack_gguf(registry_token, "private/tiny", gguf_bytes, auth=_pushing_with_a_token(tokens))
    _modelpack_gguf(registry_token, "public/tiny", gguf_bytes, auth=_pushing_with_a_token(tokens))
    assert registry_token.host.startswith("127.0.0.1:") and tokens.realm.startswith("http://127.0.0.2:")

    # anonymous: a public repository is pulled with an anonymous token; a private one is refused (exit 5)
    public = cli("ensure", f"oci://{registry_token.host}/public/tiny:v1", "--json")
    assert public.code == 0, public.stderr
    tokens.issued.clear()
    private_ref = f"oci://{registry_token.host}/private/tiny:v1"
    refused = cli("ensure", private_ref)
    assert refused.code == 5, refused.stderr
    assert registry_token.host in refused.stderr and "credentials" in refused.stderr
    assert tokens.issued and tokens.issued[0]["user"] is None

    # with a login in the Docker config: the token service gets Basic credentials, the registry a token
    _docker_config(tmp_path / "home", registry_token.host, REGISTRY_USER, REGISTRY_PASSWORD)
    tokens.issued.clear()
    ok = cli("ensure", private_ref, "--json")
    assert ok.code == 0, ok.stderr
    assert Path(ok.json()["local_path"]).read_bytes() == gguf_bytes
    assert [t["user"] for t in tokens.issued] == [REGISTRY_USER, None]  # the second: the anonymous probe
    assert tokens.issued[0]["access"] == [{"type": "repository", "name": "private/tiny", "actions": ["pull"]}]
    texts = [ok.stdout, ok.stderr, refused.stderr] + [
        p.read_bytes().decode("latin-1") for p in cache_dir.rglob("catalog.db*")
    ]
    assert not any(REGISTRY_PASSWORD in t or "Bearer ey" in t for t in texts)


class LyingRegistry:
    """A registry front (routes on the fault server) for what a real registry never does: a manifest whose
    bytes do not match the digest asked for, and blob redirects to storage on another host."""

    def __init__(self, server: Any, cdn: Any, layer: bytes) -> None:
        self.server, self.cdn = server, cdn
        cdn_url = cdn.put("storage/blob", layer)
        self.layer_digest = sha(layer)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(b"{}"), "size": 2},
            "layers": [
                {
                    "mediaType": MP_RAW,
                    "digest": self.layer_digest,
                    "size": len(layer),
                    "annotations": {"org.cncf.model.filepath": "m.gguf"},
                }
            ],
        }
        self.manifest = json.dumps(manifest).encode()
        self.cdn_url = cdn_url

        def route(h: Any, head: bool) -> bool:
            if h.headers.get("Authorization") != "Basic " + base64.b64encode(b"u:p").decode():
                h.send_response(401)
                h.send_header("WWW-Authenticate", 'Basic realm="lying"')
                h.send_header("Content-Length", "0")
                h.end_headers()
                return True
            if "/manifests/" in h.path:
                body = self.manifest
                h.send_response(200)
                h.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                if not head:
                    h.wfile.write(body)
                return True
            h.send_response(307)
            h.send_header("Location", self.cdn_url)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return True

        server.routes["/v2/"] = route


def test_manifest_pulled_by_digest_must_hash_to_it(
    fileserver: Any, tmp_path: Path, cli: Any, settings_file: Any, gguf_bytes: bytes
) -> None:
    from .servers.fileserver import FileServer

    cdn = FileServer(tmp_path / "cdn")
    try:
        lying = LyingRegistry(fileserver, cdn, gguf_bytes)
        host = fileserver.url.split("://")[1]
        env = {
            "MODEL_PROVISIONER_SETTINGS": str(settings_file(oci_credentials={host: {"username": "u", "password": "p"}}))
        }
        asked = "sha256:" + "ab" * 32
        result = cli("ensure", f"oci://{host}/lying/model@{asked}", env=env)
        assert result.code == 4 and asked in result.stderr, result.stderr
        # by tag the manifest is taken (and pinned); the blob redirect to storage gets no registry credentials
        ok = cli("ensure", f"oci://{host}/lying/model:v1", "--json", env=env)
        assert ok.code == 0, ok.stderr
        assert ok.json()["metadata"]["oci"]["manifest_digest"] == sha(lying.manifest)
        assert cdn.requests and all("Authorization" not in r.headers for r in cdn.requests)
        assert any("Authorization" in r.headers for r in fileserver.requests if "/blobs/" in r.path)
    finally:
        cdn.close()


def test_ollama_layout_artifact(registry: Any, cli: Any, gguf_bytes: bytes) -> None:
    """What Ollama's registry serves (and what `import --ollama` names oci://registry.ollama.ai/…)."""
    push_artifact(
        registry.url,
        "library/tiny",
        "1b",
        [
            (gguf_bytes, "application/vnd.ollama.image.model", {}),
            (b"{{ .Prompt }}", "application/vnd.ollama.image.template", {}),
            (b'{"stop": ["</s>"]}', "application/vnd.ollama.image.params", {}),
        ],
        config=(b'{"model_format": "gguf", "model_family": "llama"}', "application/vnd.docker.container.image.v1+json"),
        media_type="application/vnd.docker.distribution.manifest.v2+json",
    )
    result = cli("ensure", f"oci://{registry.host}/library/tiny:1b", "--json")
    assert result.code == 0, result.stderr
    out = result.json()
    assert out["metadata"]["oci"]["family"] == "ollama"
    path = Path(out["local_path"])
    assert path.name == "model.gguf" and path.read_bytes() == gguf_bytes
    assert (path.parent / "template").read_text() == "{{ .Prompt }}"


def test_an_expired_registry_token_is_renewed_mid_pull(
    registry_token: Any, cli: Any, gguf_bytes: bytes, tmp_path: Path
) -> None:
    import threading

    import httpx

    tokens = registry_token.tokens
    _modelpack_gguf(registry_token, "public/expiring", gguf_bytes, auth=_pushing_with_a_token(tokens))
    tokens.ttl_s = -57  # valid for ~3 s given the registry's 60 s leeway
    tokens.issued.clear()
    marker = tmp_path / "paused"

    def token_refused() -> bool:
        token = tokens.issued[-1]["token"]
        manifest = f"{registry_token.url}/v2/public/expiring/manifests/v1"
        return httpx.get(manifest, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 401

    def release() -> None:  # hold the pull after the manifest (token fresh) until the registry refuses the token
        try:
            wait_for(marker.exists, 30, "the pull to pause")
            wait_for(token_refused, 30, "the registry to refuse the expired token")
        finally:
            marker.unlink(missing_ok=True)

    thread = threading.Thread(target=release)
    thread.start()
    try:
        result = cli(
            "ensure",
            f"oci://{registry_token.host}/public/expiring:v1",
            "--json",
            env={"MODEL_PROVISIONER_FAILPOINTS": f"fetch.slot=pause:{marker}"},
        )
    finally:
        thread.join()
        tokens.ttl_s = 300
    assert result.code == 0, (result.stderr, tokens.issued)
    assert Path(result.json()["local_path"]).read_bytes() == gguf_bytes
    assert len(tokens.issued) >= 2  # the first token, then a renewal after the 401


def test_a_private_registry_model_in_a_shared_cache_goes_only_to_callers_it_accepts(
    registry_auth: Any, gguf_bytes: bytes, settings_file: Any, tmp_path: Path
) -> None:
    """The node cache of issue 23 item 3, for registries: before, a caller without credentials (or with wrong
    ones) was served a private model another caller had pulled into the shared cache."""
    import httpx

    from .conftest import run_cli

    _modelpack_gguf(registry_auth, "private/shared", gguf_bytes, auth=httpx.BasicAuth(REGISTRY_USER, REGISTRY_PASSWORD))
    ref = f"oci://{registry_auth.host}/private/shared:v1"
    cache = tmp_path / "node-cache"

    def caller(name: str, creds: dict[str, Any] | None) -> Any:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"oci_credentials": {registry_auth.host: creds}} if creds else {}))
        return run_cli(
            "ensure", ref, cache_dir=cache, env={"MODEL_PROVISIONER_SETTINGS": str(path), "HOME": str(tmp_path / name)}
        )

    good = {"username": REGISTRY_USER, "password": REGISTRY_PASSWORD}
    assert caller("owner", good).code == 0
    for name, creds in (("anonymous", None), ("wrong", {"username": REGISTRY_USER, "password": "not-it-123"})):
        refused = caller(name, creds)
        assert refused.code == 5 and "private/shared" in refused.stderr, refused.stderr
        assert REGISTRY_PASSWORD not in refused.stderr and "not-it-123" not in refused.stderr
    assert caller("again", good).code == 0
