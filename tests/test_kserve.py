"""The KServe storage-initializer contract, run as KServe runs it: a process with only its arguments (SRC DEST
pairs) and its environment, the cache a node-level volume shared by the pods of the node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .helpers import gguf_bytes, hub_origin_bytes, transformers_repo


def initializer(*pairs: str, node_cache: Path, env: dict[str, str] | None = None, cwd: Path) -> Any:
    """``storage-initializer`` as the init container runs it: args and env only, no flags."""
    base = {"PATH": os.environ["PATH"], "HOME": str(cwd), "MODEL_PROVISIONER_CACHE": str(node_cache)}
    if "PYTHONPATH" in os.environ:
        base["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(
        [sys.executable, "-m", "model_provisioner", "storage-initializer", *pairs],
        env={**base, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_two_pods_on_one_node_and_two_pairs_in_one_call(hub: Any, fileserver: Any, tmp_path: Path) -> None:
    hub.add_repo("org/served", transformers_repo(n_shards=2))
    gguf = gguf_bytes(tmp_path)
    url = fileserver.put("models/tiny.gguf", gguf)
    node = tmp_path / "node-cache"
    env = {"HF_ENDPOINT": hub.url}
    pod1 = tmp_path / "pod1" / "mnt" / "models"
    first = initializer("hf://org/served", str(pod1), node_cache=node, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (pod1 / "config.json").is_file() and (pod1 / "model.safetensors.index.json").is_file()
    assert sorted(p.name for p in pod1.glob("*.safetensors")) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    served = hub_origin_bytes(hub)
    # a second pod on the node: nothing from the origin, the same files hard-linked from the node cache
    pod2 = tmp_path / "pod2" / "mnt" / "models"
    second = initializer("hf://org/served", str(pod2), node_cache=node, env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert hub_origin_bytes(hub) == served
    for name in ("config.json", "model-00001-of-00002.safetensors"):
        assert os.stat(pod2 / name).st_ino == os.stat(pod1 / name).st_ino  # one copy on the node
        assert (pod2 / name).read_bytes() == transformers_repo(n_shards=2)[name]
    # two models in one call (supportsMultiModelDownload)
    a, b = tmp_path / "pod3" / "a", tmp_path / "pod3" / "b"
    both = initializer("hf://org/served", str(a), url, str(b), node_cache=node, env=env, cwd=tmp_path)
    assert both.returncode == 0, both.stderr
    assert (a / "config.json").is_file() and (b / "tiny.gguf").read_bytes() == gguf


def test_another_filesystem_gets_verified_copies(hub: Any, tmp_path: Path, small_fs: Any) -> None:
    hub.add_repo("org/copied", transformers_repo(n_shards=1))
    dest = small_fs.path / "models"
    done = initializer(
        "hf://org/copied", str(dest), node_cache=tmp_path / "node", env={"HF_ENDPOINT": hub.url}, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    files = transformers_repo(n_shards=1)
    written = sorted(p.name for p in dest.iterdir())
    assert "config.json" in written and any(n.endswith(".safetensors") for n in written), written
    for name in written:  # the minimal file set of the repo, each a verified copy (one link: not the cache's)
        assert (dest / name).read_bytes() == files[name] and os.stat(dest / name).st_nlink == 1


def test_bad_input_is_one_line_and_non_zero(tmp_path: Path) -> None:
    odd = initializer("hf://org/repo", node_cache=tmp_path / "n", cwd=tmp_path)
    assert odd.returncode == 2 and "SRC DEST pairs" in odd.stderr and odd.stderr.count("\n") == 1, odd.stderr
    bad = initializer("hf://not-a-repo", str(tmp_path / "d"), node_cache=tmp_path / "n", cwd=tmp_path)
    assert bad.returncode == 2 and "hf://ORG/REPO" in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr
    gs = initializer("gs://bucket/model", str(tmp_path / "d"), node_cache=tmp_path / "n", cwd=tmp_path)
    assert gs.returncode == 2 and "gs" in gs.stderr, gs.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_a_private_repo_in_the_node_cache_goes_only_to_pods_the_hub_accepts(hub: Any, tmp_path: Path) -> None:
    """Before: once a pod with a token had fetched a private repo into the node cache, pods with no token or
    a wrong one got its files (exit 0) and the Hub saw no request at all."""
    hub.add_repo("org/private", transformers_repo(n_shards=1), private=True)
    hub.add_repo("org/public", transformers_repo(n_shards=1))
    hub.tokens.add("hf_" + "a" * 34)
    node = tmp_path / "node-cache"
    good = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_" + "a" * 34}

    def pod(name: str, src: str, env: dict[str, str]) -> Any:
        return initializer(src, str(tmp_path / name / "mnt" / "models"), node_cache=node, env=env, cwd=tmp_path)

    assert pod("owner", "hf://org/private", good).returncode == 0
    assert pod("public", "hf://org/public", {"HF_ENDPOINT": hub.url}).returncode == 0

    def api_calls() -> int:
        return sum(1 for r in hub.server.requests if r.path.startswith("/api/models/"))

    for name, env in (
        ("no-token", {"HF_ENDPOINT": hub.url}),
        ("wrong-token", {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_" + "b" * 34}),
    ):
        before = api_calls()
        refused = pod(name, "hf://org/private", env)
        assert refused.returncode == 5 and "org/private" in refused.stderr, refused.stderr
        assert "b" * 34 not in refused.stderr
        assert api_calls() == before + 1  # the Hub was asked, with this pod's credentials
        assert not (tmp_path / name / "mnt" / "models" / "config.json").exists()
    before = api_calls()
    assert pod("same-token", "hf://org/private", good).returncode == 0  # asked once, then remembered
    assert pod("same-token-2", "hf://org/private", good).returncode == 0
    assert api_calls() == before + 1
    # a public entry keeps the zero-network warm path
    before = api_calls()
    assert pod("public-2", "hf://org/public", {"HF_ENDPOINT": hub.url}).returncode == 0
    assert api_calls() == before


def test_a_dest_that_cannot_be_made_is_one_line_and_nothing_is_fetched(hub: Any, tmp_path: Path) -> None:
    hub.add_repo("org/served", transformers_repo(n_shards=1))
    env = {"HF_ENDPOINT": hub.url}
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    for dest in ("/proc/mprov-cannot-be-here/models", str(blocker / "models")):
        bad = initializer("hf://org/served", dest, node_cache=tmp_path / "node", env=env, cwd=tmp_path)
        assert bad.returncode == 2 and "DEST" in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr
    assert hub.server.requests == []  # checked before any fetch
    # a DEST reached through a symlinked directory is resolved once: the files land where it pointed
    real = tmp_path / "real-volume"
    real.mkdir()
    (tmp_path / "mnt").symlink_to(real)
    done = initializer(
        "hf://org/served", str(tmp_path / "mnt" / "models"), node_cache=tmp_path / "node", env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert (real / "models" / "config.json").is_file()


def test_metadata_and_link_local_addresses_are_refused_by_default(tmp_path: Path) -> None:
    for uri in (
        "https://169.254.169.254/latest/meta-data/model.gguf",
        "https://[fd00:ec2::254]/model.gguf",
        "https://[fe80::1]/model.gguf",
    ):
        refused = initializer(uri, str(tmp_path / "d"), node_cache=tmp_path / "node", cwd=tmp_path)
        assert refused.returncode == 5 and "deny_networks" in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1
