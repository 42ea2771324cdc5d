"""HTTPS_PROXY / HTTP_PROXY / NO_PROXY for every network scheme, through a real forward proxy (Debian's squid).

What the proxy logged and what the origins received (squid adds ``Via``) are both checked, for hf (Hub API,
resolve, CDN redirect target), https (CONNECT), oci (registry API and blobs) and s3 (boto3's API calls and
the pre-signed GET). Proxy credentials never show; NO_PROXY sends requests direct; the policy still applies
through a proxy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model_provisioner.config.proxy import ProxySettings
from model_provisioner.core.errors import ConfigError

from .conftest import run_cli
from .servers.oci_push import push_artifact, sha
from .servers.proxy import Squid

PROXY_USER, PROXY_PASSWORD = "fleet", "proxy-pass-Secr3t-4u"


@pytest.fixture(scope="module")
def squid() -> Iterator[Squid]:
    proxy = Squid()
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def squid_auth() -> Iterator[Squid]:
    proxy = Squid(users={PROXY_USER: PROXY_PASSWORD})
    yield proxy
    proxy.close()


def _new(proxy: Squid, before: int) -> list[Any]:
    return proxy.requests()[before:]


def _via_proxy(requests: list[Any]) -> list[bool]:
    return ["squid" in r.headers.get("Via", "") for r in requests]


def test_hf_pull_sends_every_request_through_the_proxy_and_none_when_no_proxy_matches(
    squid: Squid, hub: Any, gguf_file: Path, tmp_path: Path, settings_file: Any
) -> None:
    data = gguf_file.read_bytes()
    hub.add_repo("org/tiny", {"tiny.gguf": data, "README.md": b"# tiny\n"})
    env = {"HF_ENDPOINT": hub.url, "HTTP_PROXY": squid.url, "MODEL_PROVISIONER_SETTINGS": str(settings_file())}
    before = len(squid.requests())
    result = run_cli("ensure", "hf:org/tiny/tiny.gguf", "--json", cache_dir=tmp_path / "a", env=env)
    assert result.code == 0, result.stderr
    assert result.json()["digest"] == sha(data)
    seen = hub.server.requests + hub.cdn.requests
    assert hub.cdn.requests, "the LFS file came from the CDN redirect target"
    assert all(_via_proxy(seen)), [(r.method, r.path, r.headers.get("Via")) for r in seen]
    proxied = [r for r in _new(squid, before) if f":{hub.server.port}/" in r.url or f":{hub.cdn.port}/" in r.url]
    assert len(proxied) >= len(seen)  # every request the origins saw is in the proxy's log
    assert any("/api/models/org/tiny" in r.url for r in proxied) and any("tiny.gguf" in r.url for r in proxied)

    hub.server.requests.clear()
    hub.cdn.requests.clear()
    before = len(squid.requests())
    direct = run_cli(
        "ensure",
        "hf:org/tiny/tiny.gguf",
        "--json",
        cache_dir=tmp_path / "b",
        env={**env, "NO_PROXY": "localhost,127.0.0.0/8"},
    )
    assert direct.code == 0, direct.stderr
    seen = hub.server.requests + hub.cdn.requests
    assert seen and not any(_via_proxy(seen))
    assert _new(squid, before) == []


def test_https_goes_through_connect_and_no_proxy_by_name_and_port(
    squid: Squid, tmp_path: Path, gguf_file: Path, settings_file: Any
) -> None:
    from .servers.certs import self_signed
    from .servers.fileserver import FileServer

    cert, key = self_signed(tmp_path)
    server = FileServer(tmp_path / "tls-www", tls=(cert, key))
    try:
        url = server.put("m.gguf", gguf_file.read_bytes())
        settings = settings_file(transfer={"ca_bundle": str(cert)})
        env = {"HTTPS_PROXY": squid.url, "MODEL_PROVISIONER_SETTINGS": str(settings)}
        before = len(squid.requests())
        ok = run_cli("ensure", url, cache_dir=tmp_path / "a", env=env)
        assert ok.code == 0, ok.stderr
        tunnels = [r for r in _new(squid, before) if r.method == "CONNECT"]
        assert tunnels and all(r.url == f"127.0.0.1:{server.port}" for r in tunnels)
        assert server.bytes_served["/m.gguf"] == gguf_file.stat().st_size
        # NO_PROXY naming another port of the same host does not apply; naming this one does
        before = len(squid.requests())
        other = run_cli("ensure", url, cache_dir=tmp_path / "b", env={**env, "NO_PROXY": "127.0.0.1:1"})
        assert other.code == 0 and _new(squid, before), other.stderr
        before = len(squid.requests())
        same = run_cli("ensure", url, cache_dir=tmp_path / "c", env={**env, "no_proxy": f"127.0.0.1:{server.port}"})
        assert same.code == 0 and _new(squid, before) == [], same.stderr
    finally:
        server.close()


def test_oci_and_s3_pulls_go_through_the_proxy(
    squid: Squid, registry: Any, s3: Any, make_gguf: Any, tmp_path: Path, settings_file: Any
) -> None:
    data = Path(make_gguf("p.gguf", context_length=4242)).read_bytes()  # a blob no other test pushes (or corrupts)
    push_artifact(
        registry.url,
        "proxy/tiny",
        "v1",
        [(data, "application/vnd.cncf.model.weight.v1.raw", {"org.cncf.model.filepath": "tiny.gguf"})],
    )
    client = s3.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket="proxied")
    client.put_object(Bucket="proxied", Key="tiny.gguf", Body=data)
    env = {"HTTP_PROXY": squid.url, "MODEL_PROVISIONER_SETTINGS": str(settings_file())}

    before = len(squid.requests())
    oci = run_cli("ensure", f"oci://{registry.host}/proxy/tiny:v1", "--json", cache_dir=tmp_path / "oci", env=env)
    assert oci.code == 0, oci.stderr
    logged = [r.url for r in _new(squid, before)]
    assert any("/v2/proxy/tiny/manifests/v1" in u for u in logged), logged
    assert any(f"/v2/proxy/tiny/blobs/{sha(data)}" in u for u in logged), logged

    before = len(squid.requests())
    pulled = run_cli("ensure", "s3://proxied/tiny.gguf", "--json", cache_dir=tmp_path / "s3", env=env)
    assert pulled.code == 0, pulled.stderr
    assert pulled.json()["digest"] == sha(data)
    logged = [(r.method, r.url) for r in _new(squid, before)]
    assert ("HEAD", f"{s3.url}/proxied/tiny.gguf") in logged, logged  # boto3's API call
    assert any(m == "GET" and u.startswith(f"{s3.url}/proxied/tiny.gguf?") for m, u in logged), logged  # the bytes


def test_proxy_credentials_work_and_never_show(
    squid_auth: Squid, hub: Any, gguf_file: Path, tmp_path: Path, settings_file: Any
) -> None:
    hub.add_repo("org/authed", {"tiny.gguf": gguf_file.read_bytes()})
    cache = tmp_path / "cache"
    handoff_dir = tmp_path / "serving"
    env = {
        "HF_ENDPOINT": hub.url,
        "MODEL_PROVISIONER_SETTINGS": str(settings_file()),
        "HTTP_PROXY": f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{squid_auth.port}",
    }
    ok = run_cli(
        "-v",
        "ensure",
        "hf:org/authed/tiny.gguf",
        "--engine",
        "llamacpp",
        "--handoff-dir",
        str(handoff_dir),
        "--json",
        cache_dir=cache,
        env=env,
    )
    assert ok.code == 0, ok.stderr
    assert all(r.status != 407 for r in squid_auth.requests() if "tiny.gguf" in r.url)
    listing = run_cli("ls", "--json", cache_dir=cache, env=env)
    written = [
        p for root in (cache, handoff_dir) for p in root.rglob("*") if p.is_file() and p.stat().st_size < 1 << 20
    ]
    assert any(p.suffix == ".json" for p in handoff_dir.rglob("*")), "the handoff was written"
    texts = [ok.stdout, ok.stderr, listing.stdout] + [p.read_bytes().decode("latin-1") for p in written]
    assert not any(PROXY_PASSWORD in text for text in texts)

    # wrong credentials: refused at once (exit 5, like a 401 from an origin), for a tunnel, a forwarded request
    # and the Hub API alike
    bad = f"http://{PROXY_USER}:wrong-pass-Secr3t@127.0.0.1:{squid_auth.port}"
    for ref, variable in (
        ("https://127.0.0.1:9/never.gguf", "HTTPS_PROXY"),
        ("http://127.0.0.1:9/never.gguf", "HTTP_PROXY"),
        ("hf:org/authed/tiny.gguf", "HTTP_PROXY"),
    ):
        before = len(squid_auth.requests())
        wrong = run_cli("ensure", ref, cache_dir=tmp_path / "w", env={**env, variable: bad})
        assert wrong.code == 5, wrong.stderr
        assert "wrong-pass-Secr3t" not in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
        assert "407" in wrong.stderr and variable in wrong.stderr, wrong.stderr
        assert len(squid_auth.requests()) - before <= 2  # not retried as if it were a network fault


def test_an_unreachable_or_malformed_proxy_is_a_one_line_error(
    tmp_path: Path, fileserver: Any, gguf_file: Path, settings_file: Any
) -> None:
    from .servers.nginx import free_port

    url = fileserver.put("m.gguf", gguf_file.read_bytes())
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file())}
    closed = f"http://127.0.0.1:{free_port()}"
    down = run_cli("ensure", url, cache_dir=tmp_path / "a", env={**env, "HTTP_PROXY": closed})
    assert down.code == 6, down.stderr
    assert len(down.stderr.strip().splitlines()) == 1 and f"through proxy {closed}" in down.stderr, down.stderr
    assert fileserver.requests == []
    bad = run_cli("ensure", url, cache_dir=tmp_path / "b", env={**env, "HTTPS_PROXY": "socks5://127.0.0.1:1080"})
    assert bad.code == 2, bad.stderr
    assert "HTTPS_PROXY" in bad.stderr and "http://host:port" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and fileserver.requests == []
    # an unclosed IPv6 address with credentials: before, exit 1 and a traceback
    unclosed = run_cli("ensure", url, cache_dir=tmp_path / "c", env={**env, "HTTP_PROXY": "http://u:pw-9f2e@[::1:3128"})
    assert unclosed.code == 2 and "HTTP_PROXY" in unclosed.stderr and "pw-9f2e" not in unclosed.stderr
    assert len(unclosed.stderr.strip().splitlines()) == 1, unclosed.stderr


def test_the_api_policy_still_refuses_internal_targets_through_a_proxy(
    squid: Squid, api_factory: Any, tmp_path: Path
) -> None:
    from .servers.fileserver import FileServer

    internal = FileServer(tmp_path / "internal")
    try:
        secret = internal.put("admin/secret.bin", b"internal only\n")
        api = api_factory(settings={"api_allow_networks": []}, env={"HTTP_PROXY": squid.url})
        before = len(squid.requests())
        for url in (secret, secret.replace("127.0.0.1", "localhost"), secret.replace("127.0.0.1", "0x7f000001")):
            answer = api.client.post("/v1/models/ensure", json={"ref": url})
            assert answer.status_code == 403, (url, answer.text)
            assert "internal address" in answer.json()["error"]["message"]
        assert internal.requests == [] and _new(squid, before) == []
    finally:
        internal.close()


@pytest.mark.parametrize(
    ("no_proxy", "url", "proxied"),
    [
        ("example.com", "https://example.com/m", False),
        ("example.com", "https://cdn.example.com/m", False),
        (".example.com", "https://example.com/m", False),
        ("example.com", "https://badexample.com/m", True),
        ("example.com:8443", "https://example.com/m", True),
        ("example.com:8443", "https://example.com:8443/m", False),
        ("127.0.0.1", "http://2130706433/m", False),  # an odd spelling of the same address
        ("10.0.0.0/8", "http://10.2.3.4:8080/m", False),
        ("10.0.0.0/8", "http://11.2.3.4/m", True),
        ("::1", "http://[::1]:5000/m", False),
        ("[::1]:5000", "http://[::1]:5000/m", False),
        ("*", "https://anything.example/m", False),
        ("", "https://anything.example/m", True),
    ],
)
def test_no_proxy_matching(no_proxy: str, url: str, proxied: bool) -> None:
    from urllib.parse import urlsplit

    routes = ProxySettings.from_environ(
        {"HTTPS_PROXY": "http://proxy:3128", "HTTP_PROXY": "proxy:3128", "NO_PROXY": no_proxy}
    )
    parts = urlsplit(url)
    assert (routes.proxy_for(parts.scheme, parts.hostname or "", parts.port) is not None) is proxied


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_proxy_variables_lower_case_wins_and_all_proxy_fills_in() -> None:
    routes = ProxySettings.from_environ(
        {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2", "ALL_PROXY": "http://every:3"}
    )
    assert routes.proxy_for("https", "h") == "http://lower:2" and routes.proxy_for("http", "h") == "http://every:3"
    assert ProxySettings.from_environ({}).proxy_for("https", "h") is None
    with pytest.raises(ConfigError, match="NO_PROXY entry 'host:port'"):
        ProxySettings.from_environ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "host:port"})
    assert "pw-Secr3t-x" not in repr(ProxySettings.from_environ({"HTTP_PROXY": "http://u:pw-Secr3t-x@p:1"}))
