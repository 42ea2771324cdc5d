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
    return subprocess.Popen(
        [sys.executable, "-m", "model_provisioner", "--cache-dir", str(cache), "ensure", ref, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, "MODEL_PROVISIONER_SETTINGS": str(settings)},
    )


def test_nodes_pull_through_the_mirror_and_the_origin_serves_each_blob_once(tmp_path: Path, make_gguf: Any) -> None:
    origin = Registry(tmp_path / "origin")
    mirror = Registry(tmp_path / "mirror", proxy_of=origin.url)
    try:
        model = make_gguf("m.gguf", extra_tensor_bytes=24 << 20)
        size = model.stat().st_size
        ref = f"oci://{origin.host}/team/model:v1"
        digest = _published(tmp_path, model, ref)
        settings = tmp_path / "settings.json"
        settings.write_text(json.dumps({"registry_mirrors": {origin.host: [{"url": mirror.url}]}}))
        # eight nodes at once against a cold mirror: each is told the mirror does not hold the blob yet (a 200
        # to its Range request) and waits for the mirror to fill, instead of reading the blob through it
        nodes = [pull(ref, tmp_path / f"node-{i}", settings) for i in range(8)]
        for node in nodes:
            out, err = node.communicate(timeout=120)
            assert node.returncode == 0, err
            assert json.loads(out)["digest"] == digest
        transfers = origin.blob_transfers(digest)
        # far less than eight copies from the origin: one whole copy, or two when docker-registry's proxy
        # drops a fill whose first client hung up and starts it again (1 run in 5-10 here, on the code before
        # issue 23 too: counted from the origin's access log; 2.0-2.9x the blob in all, over 15 runs)
        assert 1 <= transfers.count(size) <= 2 and sum(transfers) <= 4 * size, transfers
        # each poll the mirror answered from its upstream was hung up on at once: it cost the origin only what
        # was in flight (bounded by the sockets' buffers), never a second copy
        assert all(t < size // 2 for t in transfers if t != size), transfers
        assert len(mirror.blob_transfers(digest)) >= 8
        # one more node: nothing more from the origin
        late = pull(ref, tmp_path / "node-8", settings)
        assert late.wait(timeout=120) == 0, late.stderr.read() if late.stderr else ""
        assert origin.blob_transfers(digest) == transfers
        origin.close()  # the origin goes away: the mirror still serves what it holds
        late = pull(ref.replace(":v1", f"@{_manifest_digest(tmp_path / 'node-0', ref)}"), tmp_path / "late", settings)
        out, err = late.communicate(timeout=120)
        assert late.returncode == 0, err
        assert json.loads(out)["digest"] == digest
    finally:
        mirror.close()
        origin.close()


def _published(tmp_path: Path, model: Path, ref: str) -> str:
    """Push ``model`` to ``ref`` from a publisher's cache; returns its digest."""
    made = run_cli("ensure", str(model), "--json", cache_dir=tmp_path / "publisher")
    assert made.code == 0, made.stderr
    assert run_cli("push", str(model), ref, cache_dir=tmp_path / "publisher").code == 0
    return str(made.json()["digest"])


def _manifest_digest(cache: Path, ref: str) -> str:
    entry = run_cli("inspect", ref, "--json", cache_dir=cache).json()
    return str(entry["metadata"]["oci"]["manifest_digest"])


def test_a_mirror_serving_other_bytes_is_refused_and_the_origin_used(
    tmp_path: Path, make_gguf: Any, registry: Any
) -> None:
    model = make_gguf("p.gguf", extra_tensor_bytes=1 << 20)
    ref = f"oci://{registry.host}/poison/model:v1"
    digest = _published(tmp_path, model, ref)
    bad = FileServer(tmp_path / "bad-mirror")
    try:
        bad.put(f"v2/poison/model/blobs/{digest}", b"not the model" * 1000)
        settings = tmp_path / "settings.json"
        settings.write_text(
            json.dumps({"registry_mirrors": {registry.host: [{"url": bad.url, "capabilities": ["pull"]}]}})
        )
        before = registry.blob_gets(digest)
        node = pull(ref, tmp_path / "node", settings)
        out, err = node.communicate(timeout=120)
        assert node.returncode == 0, err
        assert json.loads(out)["digest"] == digest
        assert any(r.path.startswith("/v2/poison/model/blobs/") for r in bad.requests)  # it was asked first
        assert registry.blob_gets(digest) == before + 1  # then the origin served the real bytes
    finally:
        bad.close()


def test_a_mirror_that_never_holds_the_blob_is_read_through_after_the_fill_wait(
    tmp_path: Path, make_gguf: Any, registry: Any
) -> None:
    """A mirror answering every Range request with the whole blob (a 200) looks like one still filling its cache:
    it is polled for ``mirror_fill_wait_s``, then read through; the bytes are verified all the same."""
    from .servers.fileserver import Fault

    model = make_gguf("w.gguf", extra_tensor_bytes=12 << 20)
    ref = f"oci://{registry.host}/waiting/model:v1"
    digest = _published(tmp_path, model, ref)
    slow = FileServer(tmp_path / "no-range-mirror")
    try:
        path = f"v2/waiting/model/blobs/{digest}"
        slow.put(path, model.read_bytes())
        slow.faults[f"/{path}"] = Fault(ignore_range=True)
        settings = tmp_path / "settings.json"
        settings.write_text(
            json.dumps(
                {"transfer": {"mirror_fill_wait_s": 1.0}, "registry_mirrors": {registry.host: [{"url": slow.url}]}}
            )
        )
        before = registry.blob_gets(digest)
        node = pull(ref, tmp_path / "node", settings)
        out, err = node.communicate(timeout=120)
        assert node.returncode == 0, err
        assert json.loads(out)["digest"] == digest
        polls = [r for r in slow.requests if r.path.startswith(f"/{path}")]
        assert len(polls) >= 3 and polls[-1].at - polls[0].at >= 0.9  # polled through the wait, then read
        assert slow.served(path) >= model.stat().st_size and registry.blob_gets(digest) == before
    finally:
        slow.close()


def test_a_mirror_answering_the_manifest_with_an_html_page_is_skipped(
    tmp_path: Path, make_gguf: Any, registry: Any
) -> None:
    """A captive portal or a misconfigured proxy: 200 and HTML for the tag. Before, exit 4 and the origin was
    never tried; docs/fleet.md says a mirror's bad answer is logged and skipped."""
    model = make_gguf("h.gguf", extra_tensor_bytes=1 << 20)
    ref = f"oci://{registry.host}/portal/model:v1"
    digest = _published(tmp_path, model, ref)
    portal = FileServer(tmp_path / "portal")
    try:
        portal.put("v2/portal/model/manifests/v1", b"<html><body>Please log in to the network</body></html>")
        settings = tmp_path / "settings.json"
        settings.write_text(
            json.dumps(
                {"registry_mirrors": {registry.host: [{"url": portal.url, "capabilities": ["pull", "resolve"]}]}}
            )
        )
        before = registry.blob_gets(digest)
        node = run_cli("ensure", ref, cache_dir=tmp_path / "node", env={"MODEL_PROVISIONER_SETTINGS": str(settings)})
        assert node.code == 0, node.stderr
        assert any(r.path.startswith("/v2/portal/model/manifests/v1") for r in portal.requests)  # asked first
        assert "not a valid manifest" in node.stderr, node.stderr  # logged and skipped
        assert registry.blob_gets(digest) == before + 1  # then the origin answered
    finally:
        portal.close()
