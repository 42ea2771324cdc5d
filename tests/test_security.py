"""Issue 12: an attacker's view of the cache, the network and the API. Each test reproduces one attack through
the CLI, the library or the HTTP API against real servers on 127.0.0.1 and asserts what a user would see."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, cast

from model_provisioner import Lifecycle, ModelProvisioner, Settings

from .conftest import run_cli, wait_for
from .helpers import (
    MODELPACK_CONFIG,
    MiB,
    cdn_bytes,
    s3_bucket,
    safetensors_bytes,
    sha256_hex,
    transformers_repo,
    triton_repo,
)


def payload(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(f"sec{seed}".encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def partial_key(url: str) -> str:
    from model_provisioner.core.redact import redact_url

    return hashlib.sha256(redact_url(url).encode()).hexdigest()


# ----------------------------------------------------------------------------- 1. planted symlinks
def test_a_partial_planted_as_a_symlink_is_refused_and_its_target_untouched(
    fileserver: Any, cache_dir: Path, tmp_path: Path, settings_file: Any
) -> None:
    data = payload(2 * MiB)
    url = fileserver.put("m.bin", data)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    victim.chmod(0o644)
    partial = cache_dir / "partial"
    partial.mkdir(parents=True)
    key = partial_key(url)
    (partial / f"{key}.part").symlink_to(victim)
    (partial / f"{key}.json").write_text(json.dumps({"origin": url, "expected_size": None, "parallel": False}))
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file())}
    result = run_cli("ensure", url, "--digest", f"sha256:{sha256_hex(data)}", cache_dir=cache_dir, env=env)
    assert result.code == 4, result.stderr
    assert f"{key}.part" in result.stderr and ("symbolic link" in result.stderr or "one link" in result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1
    assert victim.read_bytes() == b"precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not any((cache_dir / "blobs" / "sha256").iterdir())
    listed = run_cli("ls", "--json", cache_dir=cache_dir).json()["models"]
    assert all(e["lifecycle"] != "Active" for e in listed)
    # once the planted link is gone, the same command works
    (partial / f"{key}.part").unlink()
    assert run_cli("ensure", url, "--digest", f"sha256:{sha256_hex(data)}", cache_dir=cache_dir, env=env).code == 0


def test_a_partial_planted_as_a_hard_link_is_refused(
    fileserver: Any, cache_dir: Path, tmp_path: Path, settings_file: Any
) -> None:
    data = payload(MiB, seed=2)
    url = fileserver.put("h.bin", data)
    victim = tmp_path / "mine.bin"
    victim.write_bytes(b"x" * 100)
    partial = cache_dir / "partial"
    partial.mkdir(parents=True)
    key = partial_key(url)
    os.link(victim, partial / f"{key}.part")
    (partial / f"{key}.json").write_text(json.dumps({"origin": url, "expected_size": None, "parallel": False}))
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file())}
    result = run_cli("ensure", url, cache_dir=cache_dir, env=env)
    assert result.code == 4 and "one link" in result.stderr, result.stderr
    assert victim.read_bytes() == b"x" * 100


def test_a_symlinked_store_lock_never_truncates_its_target(cache_dir: Path, tmp_path: Path, gguf_file: Path) -> None:
    assert run_cli("ensure", str(gguf_file), cache_dir=cache_dir).code == 0
    victim = tmp_path / "victim.conf"
    victim.write_text("setting = 1\n")
    lock = cache_dir / "locks" / "store.lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    result = run_cli("gc", cache_dir=cache_dir)
    assert result.code == 4 and "store.lock" in result.stderr, result.stderr
    assert victim.read_text() == "setting = 1\n"


# --------------------------------------------------------------------------- 2. a blob's name is not trust
def test_a_blob_edited_through_an_imported_hard_link_is_rehashed_and_never_served(
    tmp_path: Path, cache_dir: Path, fileserver: Any, settings_file: Any
) -> None:
    from make_tiny_gguf import write_tiny_gguf

    models = tmp_path / "ollama"
    data = write_tiny_gguf(tmp_path / "o.gguf").read_bytes()
    hex_ = sha256_hex(data)
    (models / "blobs").mkdir(parents=True)
    source = models / "blobs" / f"sha256-{hex_}"
    source.write_bytes(data)
    manifest_dir = models / "manifests" / "registry.ollama.ai" / "library" / "tiny"
    manifest_dir.mkdir(parents=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{hex_}", "size": len(data)}
    (manifest_dir / "latest").write_text(json.dumps({"schemaVersion": 2, "layers": [layer]}))
    assert run_cli("import", "--ollama", str(models), "--only", "ollama", cache_dir=cache_dir).code == 0
    blob = cache_dir / "blobs" / "sha256" / hex_
    assert blob.stat().st_ino == source.stat().st_ino  # adopted by a hard link: one copy on disk
    # the other tool's owner edits "their" file in place (same inode), keeping its size and mtime
    st = source.stat()
    source.chmod(0o644)
    with open(source, "r+b") as fh:
        fh.seek(len(data) - 1)
        fh.write(b"\x00" if data[-1:] != b"\x00" else b"\x01")
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    url = fileserver.put("same.gguf", data)
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file())}
    result = run_cli("ensure", url, "--digest", f"sha256:{hex_}", "--json", cache_dir=cache_dir, env=env)
    assert result.code == 0, result.stderr
    resolved = result.json()
    assert resolved["bytes_fetched"] == len(data)  # not answered from the tampered blob
    assert Path(resolved["local_path"]).read_bytes() == data
    assert fileserver.served("same.gguf") == len(data)
    # the imported entry shares the bad inode: a warm ensure of it re-hashes and refuses it
    imported = run_cli("ensure", "oci://registry.ollama.ai/library/tiny:latest", "--offline", cache_dir=cache_dir)
    assert imported.code != 0
    located = run_cli("locate", "oci://registry.ollama.ai/library/tiny:latest", cache_dir=cache_dir)
    assert located.code == 3


def test_a_blob_tampered_in_the_store_is_quarantined_before_it_is_linked(
    net: Any, fileserver: Any, cache_dir: Path
) -> None:
    data = payload(MiB, seed=3)
    first = fileserver.put("a/m.bin", data)
    prov = net()
    prov.ensure_present(first, "sha256:" + sha256_hex(data))
    blob = cache_dir / "blobs" / "sha256" / sha256_hex(data)
    blob.chmod(0o644)
    blob.write_bytes(b"\x00" * len(data))  # the same inode, other bytes
    second = fileserver.put("b/m.bin", data)
    resolved = prov.ensure_present(second, "sha256:" + sha256_hex(data))
    assert resolved.bytes_fetched == len(data) and resolved.local_path.read_bytes() == data


# ------------------------------------------------------------------- 15. ctime is part of the fingerprint
def test_a_pinned_local_file_edited_with_its_mtime_restored_is_caught(cache_dir: Path, gguf_file: Path) -> None:
    digest = "sha256:" + sha256_hex(gguf_file.read_bytes())
    assert run_cli("ensure", str(gguf_file), "--digest", digest, cache_dir=cache_dir).code == 0
    st = gguf_file.stat()
    data = bytearray(gguf_file.read_bytes())
    data[-1] ^= 0xFF
    gguf_file.write_bytes(bytes(data))
    os.utime(gguf_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = run_cli("ensure", str(gguf_file), cache_dir=cache_dir)
    assert result.code == 4 and "mismatch" in result.stderr, result.stderr
    with ModelProvisioner(Settings.from_env(cache_dir=cache_dir)) as prov:
        entry = prov.entry(str(gguf_file))
        assert entry is not None and entry.lifecycle is not Lifecycle.ACTIVE


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


# ------------------------------------------------- 4. allow_remote_code is the setting in force, every time
def test_trust_remote_code_follows_the_settings_in_force_when_the_handoff_is_written(
    hub: Any, tmp_path: Path, cache_dir: Path, settings_file: Any
) -> None:

    hub.add_repo(
        "org/custom",
        transformers_repo(
            extra={"modeling_custom.py": b"print('hi')"},
            config={"model_type": "custom", "auto_map": {"AutoModel": "modeling_custom.Model"}},
        ),
    )

    def handoff(allow: bool, out: str) -> tuple[bool, dict[str, Any]]:
        settings = settings_file(allow_remote_code=allow)
        env = {"MODEL_PROVISIONER_SETTINGS": str(settings), "HF_ENDPOINT": hub.url}
        result = run_cli(
            "ensure",
            "hf:org/custom",
            "--engine",
            "vllm",
            "--handoff-dir",
            str(tmp_path / out),
            cache_dir=cache_dir,
            env=env,
        )
        assert result.code == 0, result.stderr
        written = json.loads((tmp_path / out / ".runtime" / "engines" / "vllm.json").read_text())
        line = (tmp_path / out / ".runtime" / "provenance" / "models.jsonl").read_text().splitlines()[-1]
        return written["model"]["trust_remote_code"], json.loads(line)

    trusted, record = handoff(True, "a")  # downloaded while allowed
    assert trusted is True and record["trust_remote_code"] is True
    served = cdn_bytes(hub)
    trusted, record = handoff(False, "b")  # the operator revoked it: the cached repo is no longer trusted
    assert trusted is False and record["trust_remote_code"] is False and record["from_cache"] is True
    trusted, record = handoff(True, "c")  # and allowing it later needs no new download
    assert trusted is True and record["from_cache"] is True
    assert cdn_bytes(hub) == served


# ------------------------------------------------------------ 6. a body is never longer than declared
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


# -------------------------------------------------------------- 11. endpoint credentials stay secret
def test_credentials_in_the_hub_endpoint_never_reach_output_or_the_catalog(
    hub: Any, cache_dir: Path, settings_file: Any
) -> None:
    from .conftest import EXAMPLE_GGUF

    hub.add_repo("org/cred", {"m.gguf": EXAMPLE_GGUF.read_bytes()})
    endpoint = hub.url.replace("http://", "http://mirror-user:endpoint-Secr3t-pw@")
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file()), "HF_ENDPOINT": endpoint}
    result = run_cli("ensure", "hf:org/cred/m.gguf", "--json", cache_dir=cache_dir, env=env)
    assert result.code == 0, result.stderr
    assert result.json()["metadata"]["hub_endpoint"] == hub.url
    inspected = run_cli("inspect", "hf:org/cred/m.gguf", "--json", cache_dir=cache_dir, env=env)
    for text in (result.stdout, result.stderr, inspected.stdout, inspected.stderr):
        assert "endpoint-Secr3t-pw" not in text
    for path in cache_dir.rglob("*"):
        if path.is_file():
            assert b"endpoint-Secr3t-pw" not in path.read_bytes(), path


# ------------------------------------------------------------------ 16. what the catalog keeps is bounded
def _gguf_string(text: bytes) -> bytes:
    import struct

    return struct.pack("<Q", len(text)) + text


def test_a_gguf_with_a_hundred_thousand_tensor_types_makes_a_small_catalog_row(tmp_path: Path, cache_dir: Path) -> None:
    import struct

    tensors = 100_000
    kv = [(b"general.architecture", _gguf_string(b"llama")), (b"general.name", _gguf_string(b"n" * 1_000_000))]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, tensors, len(kv)))
    for key, value in kv:
        out += _gguf_string(key) + struct.pack("<I", 8) + value
    for i in range(tensors):
        out += _gguf_string(b"t%d" % i) + struct.pack("<IQIQ", 1, 1, 1000 + i, 0)
    out += b"\x00" * (-len(out) % 32) + b"\x00" * 32
    path = tmp_path / "types.gguf"
    path.write_bytes(bytes(out))
    result = run_cli("ensure", str(path), "--json", cache_dir=cache_dir)
    assert result.code == 0, result.stderr
    assert len(result.stdout) < 4000
    metadata = result.json()["metadata"]
    assert metadata["tensor_types"] == {"unknown": tensors} and len(metadata["name"]) <= 257
    assert (cache_dir / "catalog.db").stat().st_size < 1 << 20


# ------------------------------------------------------- 12. two ids for one file share a view safely
def test_removing_one_of_two_ids_for_one_file_keeps_the_others_view(
    hub: Any, cache_dir: Path, settings_file: Any
) -> None:
    from .conftest import EXAMPLE_GGUF

    hub.add_repo("org/two", {"m-Q4_K_M.gguf": EXAMPLE_GGUF.read_bytes()})
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file()), "HF_ENDPOINT": hub.url}
    by_quant = run_cli("ensure", "hf:org/two:Q4_K_M", "--json", cache_dir=cache_dir, env=env).json()
    by_file = run_cli("ensure", "hf:org/two/m-Q4_K_M.gguf", "--json", cache_dir=cache_dir, env=env).json()
    assert by_quant["local_path"] == by_file["local_path"]
    view = Path(by_file["local_path"])
    assert not [p for p in view.parent.iterdir() if p.name.endswith(".tmp")]  # no stray link from re-linking
    assert run_cli("rm", "hf:org/two:Q4_K_M", cache_dir=cache_dir, env=env).code == 0
    assert view.read_bytes() == EXAMPLE_GGUF.read_bytes()
    assert run_cli("locate", "hf:org/two/m-Q4_K_M.gguf", cache_dir=cache_dir, env=env).code == 0
    assert run_cli("rm", "hf:org/two/m-Q4_K_M.gguf", cache_dir=cache_dir, env=env).code == 0
    assert not view.exists()


# ------------------------------------------------- 9. api_file_roots: checked on the file that is hashed
def test_swapping_a_path_between_a_link_and_a_file_never_registers_a_file_outside_the_roots(
    api_factory: Any, tmp_path: Path, make_gguf: Any
) -> None:
    import threading

    root = tmp_path / "allowed"
    root.mkdir()
    inside = make_gguf("inside.gguf", context_length=1024)
    outside = make_gguf("outside-secret.gguf", context_length=4096)
    os.link(inside, root / "real.gguf")
    target = root / "m.gguf"
    as_link, as_file = root / ".swap-link", root / ".swap-file"
    c = api_factory(settings={"api_file_roots": [str(root)]}).client
    stop = threading.Event()

    def swapper() -> None:
        while not stop.is_set():
            for prepared, make in (
                (as_link, lambda p: p.symlink_to(outside)),
                (as_file, lambda p: os.link(root / "real.gguf", p)),
            ):
                prepared.unlink(missing_ok=True)
                make(prepared)
                os.replace(prepared, target)

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        statuses = [c.post("/v1/models/ensure", json={"ref": str(target)}).status_code for _ in range(150)]
    finally:
        stop.set()
        thread.join(timeout=10)
    assert set(statuses) <= {200, 403, 409, 422}, statuses
    secret = "sha256:" + sha256_hex(outside.read_bytes())
    models = c.get("/v1/models").json()["models"]
    for model in models:
        assert model["digest"] != secret, model
        assert Path(model["local_path"]).resolve() != outside.resolve()


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


# ------------------------------------------------------ 13. bounded request bodies and bounded quoting
def test_huge_request_bodies_are_413_and_huge_refs_are_quoted_short(api_factory: Any, cache_dir: Path) -> None:
    c = api_factory().client
    huge = b'{"ref": "' + b"a" * (100 << 20) + b'"}'
    answer = c.post("/v1/models/ensure", content=huge, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "body_too_large"

    def chunks() -> Any:  # no Content-Length: cut once past the cap
        yield b'{"ref": "'
        for _ in range(100):
            yield b"b" * (1 << 20)
        yield b'"}'

    answer = c.post("/v1/models/ensure", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert c.get("/healthz").status_code == 200
    long_ref = c.post("/v1/models/ensure", json={"ref": "hf:" + "x" * 50_000})
    assert long_ref.status_code == 400 and len(long_ref.text) < 600, long_ref.text
    cli = run_cli("ensure", "hf:org/" + "y" * 100_000, cache_dir=cache_dir)
    assert cli.code == 2 and len(cli.stderr) < 600 and len(cli.stderr.strip().splitlines()) == 1, cli.stderr


# ----------------------------------------------- 14. odd and hostile input: exit 2 or 4, never 1 or Pending
def test_odd_hosts_are_invalid_refs(cache_dir: Path) -> None:
    for host in ("0177.0.0.1", "256.1.1.1", "a..b", "x" * 300 + ".example", ".lead.example", "127.1", "2130706433"):
        result = run_cli("ensure", f"https://{host}/m.gguf", cache_dir=cache_dir)
        assert result.code == 2 and "host" in result.stderr, (host, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


def test_hostile_names_and_nesting_from_a_hub_are_exit_4_and_never_pending(
    hub: Any, cache_dir: Path, settings_file: Any
) -> None:
    from .conftest import EXAMPLE_GGUF

    gguf = EXAMPLE_GGUF.read_bytes()
    deep = b"[" * 200_000 + b"]" * 200_000
    hub.add_repo("org/longname", {"n" * 300 + ".gguf": gguf})
    hub.add_repo("org/deep", {"config.json": b'{"a": ' + deep + b"}", "model.safetensors": safetensors_bytes(100)})
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file()), "HF_ENDPOINT": hub.url}
    for ref in ("hf:org/longname", "hf:org/deep"):
        result = run_cli("ensure", ref, cache_dir=cache_dir, env=env)
        assert result.code == 4, (ref, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    models = run_cli("ls", "--json", cache_dir=cache_dir, env=env).json()["models"]
    assert all(m["lifecycle"] == "Failed" for m in models), models


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


# ------------------------------------------- 7 (API). slow origins never starve probes, local work or SIGTERM
def test_slow_jobs_never_block_local_work_probes_or_shutdown(
    api_factory: Any, fileserver: Any, tmp_path: Path, gguf_file: Path, cache_dir: Path
) -> None:
    import signal
    import threading
    import time

    import httpx

    from .servers.fileserver import Fault

    data = payload(3000, seed=7)
    slow = []
    for i in range(6):
        url = fileserver.put(f"slow{i}.bin", data)
        fileserver.faults[f"/slow{i}.bin"] = Fault(drip_s=0.05)  # 20 B/s: minutes per file
        slow.append(url)
    api = api_factory(
        settings={
            "api_file_roots": [str(gguf_file.parent)],
            "api_max_sync_fetches": 4,
            "transfer": {"min_rate_bytes_per_s": 0, "stall_timeout_s": 30, "attempts": 1},
        }
    )
    c = api.client
    for url in slow[:4]:
        assert c.post("/v1/models/ensure", params={"wait": "false"}, json={"ref": url}).status_code == 202
    started = time.monotonic()
    local = c.post("/v1/models/ensure", params={"wait": "false"}, json={"ref": str(gguf_file)}).json()
    while c.get(f"/v1/jobs/{local['id']}").json()["state"] in ("queued", "running"):
        assert time.monotonic() - started < 10, "the local job waited behind slow downloads"
        time.sleep(0.05)
    assert c.get(f"/v1/jobs/{local['id']}").json()["state"] == "succeeded"
    # more synchronous slow ensures than the bound: the rest are told to come back, probes still answer
    answers: list[int] = []

    def sync(url: str) -> None:
        with httpx.Client(base_url=api.url, headers=dict(c.headers), timeout=3) as own:
            try:
                answers.append(own.post("/v1/models/ensure", json={"ref": url}).status_code)
            except httpx.TimeoutException:
                answers.append(0)

    threads = [threading.Thread(target=sync, args=(slow[4 + i % 2] + f"?n={i}",), daemon=True) for i in range(12)]
    for t in threads:
        t.start()
    wait_for(lambda: answers.count(503) >= 8, 10, "the bound to be full (the rest told 503)")
    probe_start = time.monotonic()
    assert c.get("/healthz", timeout=5).status_code == 200
    assert time.monotonic() - probe_start < 3.0  # the feature: a probe answers while every worker is busy
    for t in threads:
        t.join(timeout=10)
    assert answers.count(503) >= 8, answers
    # SIGTERM with slow transfers running: the server is gone within seconds, partials kept
    deadline = time.monotonic() + 10
    while not (partials := sorted((cache_dir / "partial").glob("*.part"))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert partials, "no download was running"
    stopped = time.monotonic()
    api.proc.send_signal(signal.SIGTERM)
    api.proc.wait(timeout=15)
    assert time.monotonic() - stopped < 10
    assert all(p.exists() for p in partials), api.logs()[-2000:]


def test_finished_jobs_expire() -> None:
    """On the registry's own clock, moved by the test: no sleep decides the outcome."""
    from model_provisioner.server.jobs import Job, JobRegistry

    now = [1000.0]
    registry = JobRegistry(2, ttl_s=60, max_jobs=5, clock=lambda: now[0])
    jobs = [Job(str(i), "file:/m") for i in range(20)]

    def work(job: Job) -> None:
        job.state = "succeeded"

    def all_finished(items: list[Job]) -> bool:
        return bool(wait_for(lambda: all(j.finished_at is not None for j in items), 30, "the jobs to finish"))

    for job in jobs:
        registry.submit(job, None, work)
    assert all_finished(jobs)
    assert len(registry) == 5  # never more than max_jobs finished ones
    now[0] += 59
    assert registry.get("19") is not None  # within its ttl
    now[0] += 2
    assert registry.get("19") is None and len(registry) == 0
    broken = Job("b", "file:/m")

    def divide_by_zero(job: Job) -> None:
        job.result = {"never": 1 / 0}

    registry.submit(broken, "origin", divide_by_zero)
    assert all_finished([broken])
    assert broken.state == "failed" and "ZeroDivisionError" in (broken.error or {}).get("message", "")
    registry.shutdown()


def test_a_symlinked_catalog_is_refused_and_its_target_untouched(
    cache_dir: Path, tmp_path: Path, gguf_file: Path
) -> None:
    victim = tmp_path / "victim.db"
    victim.write_bytes(b"not a database of ours\n")
    cache_dir.mkdir()
    (cache_dir / "catalog.db").symlink_to(victim)
    result = run_cli("ensure", str(gguf_file), cache_dir=cache_dir)
    assert result.code == 4 and "catalog.db" in result.stderr and "symbolic link" in result.stderr, result.stderr
    assert victim.read_bytes() == b"not a database of ours\n"
