"""``Retry-After`` is honoured by the range workers and by the registry client as by the single stream (the
waits are measured on the server's clock)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_provisioner import Settings
from model_provisioner.net.registry.client import RegistryClient
from tests.servers.fileserver import Fault

from .helpers import MiB


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_range_workers_honour_retry_after(net: Any, fileserver: Any) -> None:
    data = np.random.default_rng(3).integers(0, 256, 8 * MiB, dtype=np.uint8).tobytes()
    url = fileserver.put("big.bin", data)
    # the first request (a bounded first range) is served; the next one, a range worker's, gets 503 + Retry-After
    fileserver.faults["/big.bin"] = Fault(statuses=[503], retry_after="1", statuses_after=1)
    prov = net(
        transfer={
            "connections": 4,
            "parallel_threshold_bytes": MiB,
            "parallel_chunk_min_bytes": MiB,
            "single_stream_enough_bytes_per_s": 1e15,  # always fan out after the first range
            "backoff_base_s": 0.01,
        }
    )
    resolved = prov.ensure_present(url, "sha256:" + hashlib.sha256(data).hexdigest())
    assert resolved.local_path.read_bytes() == data
    requests = [r for r in fileserver.requests if r.path == "/big.bin"]
    refused = requests[1]  # answered 503 with Retry-After: 1
    again = next(r for r in requests[2:] if r.headers.get("Range") == refused.headers.get("Range"))
    # without Retry-After the backoff would have retried within ~10 ms
    assert again.at - refused.at >= 0.9, (again.at - refused.at, refused.headers.get("Range"))


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_the_registry_client_honours_retry_after(
    fileserver: Any, cache_dir: Path, settings_file: Any, monkeypatch: Any
) -> None:
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:" + "4" * 64, "size": 2},
            "layers": [],
        }
    ).encode()
    fileserver.put("v2/team/model/manifests/v1", manifest)
    fileserver.faults["/v2/team/model/manifests/v1"] = Fault(statuses=[503], retry_after="1")
    monkeypatch.setenv("MODEL_PROVISIONER_SETTINGS", str(settings_file(transfer={"backoff_base_s": 0.01})))
    registry = fileserver.url.split("://", 1)[1].rstrip("/")
    with RegistryClient(registry, Settings.from_env(cache_dir=cache_dir)) as client:
        raw, digest, _ = client.get_manifest("team/model", "v1", "oci://test")
    assert raw == manifest and digest == "sha256:" + hashlib.sha256(manifest).hexdigest()
    first, second = [r for r in fileserver.requests if r.path == "/v2/team/model/manifests/v1"][:2]
    assert second.at - first.at >= 0.9, second.at - first.at  # linear 10 ms backoff would not wait
