"""Hostile servers and addresses: internal addresses and every redirect hop refused, deny_hosts for every
spelling of an address, https -> http redirects, a registry named like loopback, endless and slow bodies,
gzip bombs and layers that unpack past the free space."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from model_provisioner import Lifecycle

from .conftest import run_cli
from .helpers import MODELPACK_CONFIG, MiB, payload, sha256_hex


# ---------------------------------------------------------------------- 3. no SSRF through the HTTP API
def test_the_api_refuses_to_fetch_internal_addresses_and_every_redirect_hop(
    api_factory: Any, fileserver: Any, tmp_path: Path
) -> None:
    from .servers.fileserver import FileServer

    internal = FileServer(tmp_path / "internal")
    try:
        secret_url = internal.put("admin/secret.bin", b"internal only\n")
        c = api_factory(settings={"api_allow_networks": []}).client
        spellings = [secret_url] + [
            secret_url.replace("127.0.0.1", host) for host in ("0x7f000001", "[::ffff:127.0.0.1]", "localhost")
        ]
        for url in spellings:
            answer = c.post("/v1/models/ensure", json={"ref": url})
            assert answer.status_code == 403, (url, answer.text)
            assert "internal address" in answer.json()["error"]["message"]
        assert internal.requests == []  # not one request reached it
        # a host the operator admitted redirects to an internal one: the hop is checked too
        public = api_factory(settings={"api_allow_networks": [f"127.0.0.1:{fileserver.port}"]}).client
        fileserver.put("r.bin", b"x")
        from .servers.fileserver import Fault

        fileserver.faults["/r.bin"] = Fault(redirect_to=secret_url)
        hop = public.post("/v1/models/ensure", json={"ref": f"{fileserver.url}/r.bin"})
        assert hop.status_code == 403 and "internal address" in hop.json()["error"]["message"], hop.text
        assert internal.requests == [] and len(fileserver.requests) == 1
        # the local user's CLI keeps its freedom
        assert run_cli("ensure", secret_url, cache_dir=tmp_path / "cli-cache").code == 0
    finally:
        internal.close()


# ------------------------------------------------------------------- 5. hosts matched as the network sees them
@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_deny_hosts_holds_for_every_spelling_of_an_address(
    fileserver: Any, cache_dir: Path, settings_file: Any
) -> None:
    url = fileserver.put("d.bin", payload(1000))
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file(policy={"deny_hosts": ["127.0.0.1", "127.*"]}))}
    for host in ("0x7f000001", "[::ffff:127.0.0.1]", "localhost", "[::ffff:7f00:1]"):
        result = run_cli("ensure", url.replace("127.0.0.1", host), cache_dir=cache_dir, env=env)
        assert result.code == 5 and "deny_hosts" in result.stderr, (host, result.stderr)
    for host in ("2130706433", "017700000001", "127.1"):  # digits-only spellings are not valid URL hosts at all
        result = run_cli("ensure", url.replace("127.0.0.1", host), cache_dir=cache_dir, env=env)
        assert result.code == 2 and "IPv4" in result.stderr, (host, result.stderr)
    assert fileserver.requests == []
    # a redirect (whose target never passes the ref parser) to another spelling is denied too
    fileserver.put("hop.bin", b"x")
    from .servers.fileserver import Fault

    fileserver.faults["/hop.bin"] = Fault(redirect_to=f"http://0x7f000002:{fileserver.port}/d.bin")
    other = settings_file(policy={"deny_hosts": ["127.0.0.2"]})
    result = run_cli(
        "ensure", f"{fileserver.url}/hop.bin", cache_dir=cache_dir, env={"MODEL_PROVISIONER_SETTINGS": str(other)}
    )
    assert result.code == 5 and "deny_hosts '127.0.0.2'" in result.stderr, result.stderr


# --------------------------------------------------------- 8. credentials never follow a change of origin
def _dual_protocol_server(tmp_path: Path) -> Any:
    """One port speaking TLS and plain HTTP (it peeks at the first byte): https://127.0.0.1:P/m.bin redirects
    to http://127.0.0.1:P/m.bin on the very same host and port, which serves the file and records headers."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from .servers.certs import self_signed

    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    seen: list[dict[str, str]] = []
    body = payload(4096, seed=8)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            tls = isinstance(self.connection, ssl.SSLSocket)
            seen.append({"tls": str(tls), **{k.lower(): v for k, v in self.headers.items()}})
            if tls:
                self.send_response(302)
                port = cast(tuple[str, int], self.server.server_address)[1]
                self.send_header("Location", f"http://127.0.0.1:{port}/m.bin")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self) -> Any:
            sock, addr = self.socket.accept()
            sock.settimeout(5)
            if sock.recv(1, 0x2) == b"\x16":  # MSG_PEEK: a TLS ClientHello
                sock = context.wrap_socket(sock, server_side=True)
            return sock, addr

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.seen, server.body, server.cert = seen, body, cert  # type: ignore[attr-defined]
    return server


def test_an_https_to_http_redirect_is_refused_and_never_carries_credentials(
    tmp_path: Path, cache_dir: Path, settings_file: Any
) -> None:
    server = _dual_protocol_server(tmp_path)
    try:
        url = f"https://user:url-secret-pw@127.0.0.1:{server.server_address[1]}/m.bin"
        settings = settings_file(transfer={"ca_bundle": str(server.cert)})
        refused = run_cli("ensure", url, cache_dir=cache_dir, env={"MODEL_PROVISIONER_SETTINGS": str(settings)})
        assert refused.code == 6 and "downgrades https to plain http" in refused.stderr, refused.stderr
        assert "url-secret-pw" not in refused.stderr
        assert [s["tls"] for s in server.seen] == ["True"]  # the plain-http target was never asked
        allowed = settings_file(transfer={"ca_bundle": str(server.cert), "allow_https_downgrade": True})
        followed = run_cli(
            "ensure", url, "--json", cache_dir=cache_dir, env={"MODEL_PROVISIONER_SETTINGS": str(allowed)}
        )
        assert followed.code == 0, followed.stderr
        plain = [s for s in server.seen if s["tls"] == "False"]
        assert plain and all("authorization" not in s and "cookie" not in s for s in plain)
        assert any("authorization" in s for s in server.seen if s["tls"] == "True")
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------- 17. a registry name is not an address
def test_a_registry_named_like_loopback_is_not_reached_over_plain_http() -> None:
    from model_provisioner import Settings
    from model_provisioner.net.registry.client import RegistryClient

    settings = Settings.from_env(cache_dir="/nonexistent")
    assert RegistryClient("127.attacker.example", settings).base == "https://127.attacker.example"
    assert RegistryClient("127.attacker.example:5000", settings).base == "https://127.attacker.example:5000"
    assert RegistryClient("127.0.0.1:5000", settings).base == "http://127.0.0.1:5000"
    assert RegistryClient("localhost:5000", settings).base == "http://localhost:5000"
    assert RegistryClient("[::1]:5000", settings).base == "http://[::1]:5000"


# ------------------------------------------------------------ 6. a body is never longer than declared
@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_an_endless_body_for_a_declared_size_is_cut_at_once(
    net: Any, hub: Any, cache_dir: Path, tmp_path: Path
) -> None:
    from model_provisioner import TransferFailed

    from .conftest import EXAMPLE_GGUF
    from .servers.fileserver import Fault

    big = EXAMPLE_GGUF.read_bytes() * 2  # over the fake Hub's LFS threshold: served from its CDN
    hub = type(hub)(tmp_path / "hub2", lfs_threshold=100)
    try:
        hub.add_repo("org/endless", {"m.gguf": big})
        hub.cdn.faults[f"/lfs/{sha256_hex(big)}"] = Fault(endless=True)
        prov = net(hub.url)
        try:
            prov.ensure_present("hf:org/endless/m.gguf")
            raise AssertionError("an endless body was accepted")
        except TransferFailed as exc:
            assert exc.exit_code == 6 and "more than the" in str(exc) and str(len(big)) in str(exc)
        served = sum(hub.cdn.bytes_served.values())
        assert served < 64 * MiB  # one attempt, stopped at once (the server pushes ahead of our reads)
        assert not any((cache_dir / "partial").glob("*.part"))
        entry = prov.entry("hf:org/endless/m.gguf")
        assert entry is None or entry.lifecycle is not Lifecycle.ACTIVE
    finally:
        hub.close()


# --------------------------------------------------------------------------- 7. slow-loris and deadlines
@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_a_slow_loris_body_is_a_stall_then_exit_6(fileserver: Any, cache_dir: Path, settings_file: Any) -> None:
    import time

    from .conftest import EXAMPLE_GGUF
    from .servers.fileserver import Fault

    url = fileserver.put("loris.gguf", EXAMPLE_GGUF.read_bytes())
    fileserver.faults["/loris.gguf"] = Fault(drip_s=0.05)  # 20 B/s: an 896-byte file would take 45 s
    settings = settings_file(transfer={"min_rate_bytes_per_s": 200, "min_rate_window_s": 0.5, "attempts": 2})
    started = time.monotonic()
    result = run_cli("ensure", url, cache_dir=cache_dir, env={"MODEL_PROVISIONER_SETTINGS": str(settings)})
    assert result.code == 6 and "too slow" in result.stderr and "min_rate_bytes_per_s" in result.stderr, result.stderr
    assert time.monotonic() - started < 20
    # an overall deadline per file, retries included
    settings = settings_file(transfer={"min_rate_bytes_per_s": 0, "file_deadline_s": 1.0})
    started = time.monotonic()
    result = run_cli("ensure", url, cache_dir=cache_dir, env={"MODEL_PROVISIONER_SETTINGS": str(settings)})
    assert result.code == 6 and "file_deadline_s" in result.stderr, result.stderr
    assert time.monotonic() - started < 20


# --------------------------------------------------------------- 10. decompression bombs in OCI layers
def _push_bomb(registry: Any, repo: str, member_bytes: int) -> str:
    from .servers.oci_push import push_artifact, tar_bytes

    layer = tar_bytes({"config.json": b"{}", "model.safetensors": b"\0" * member_bytes}, compression="gzip")
    push_artifact(
        registry.url,
        repo,
        "v1",
        [(layer, "application/vnd.cncf.model.weight.v1.tar+gzip", {})],
        config=(b'{"config": {"format": "safetensors"}}', MODELPACK_CONFIG),
    )
    return f"oci://{registry.host}/{repo}:v1"


def test_a_gzip_bomb_layer_is_refused_before_it_is_written(registry: Any, cache_dir: Path, settings_file: Any) -> None:
    ref = _push_bomb(registry, "bombs/ratio", 64 * MiB)
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file())}
    result = run_cli("ensure", ref, cache_dir=cache_dir, env=env)
    assert result.code == 4 and "decompression bomb" in result.stderr and "max_unpack_ratio" in result.stderr, (
        result.stderr
    )
    written = sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file())
    assert written < 4 * MiB  # nothing of the 64 MiB member was written
    assert run_cli("locate", ref, cache_dir=cache_dir, env=env).code == 3


def test_a_layer_that_unpacks_past_the_free_space_is_exit_7(registry: Any, small_fs: Any, settings_file: Any) -> None:
    ref = _push_bomb(registry, "bombs/space", 20 * MiB)
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file(transfer={"max_unpack_ratio": 100000}))}
    result = run_cli("ensure", ref, cache_dir=small_fs.path / "cache", env=env)
    assert result.code == 7 and "not enough disk space" in result.stderr, result.stderr
