"""Real loaders accept every transformers view we lay out, whatever the source: a local directory, the Hub
(hf:), an S3 prefix and an OCI artifact (a ModelPack pushed by us). Each view is read with
``transformers.AutoConfig``, ``AutoTokenizer`` and ``safetensors.safe_open``: every tensor the index names is
present in its shard, and the sizes add up to the index's total. With torch installed (the slow test), the
model is built by ``AutoModelForCausalLM.from_pretrained`` with no missing or unexpected keys and generates."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save

from .conftest import run_cli

VOCAB = ["[UNK]", "[PAD]", "hello", "world", "model", "provisioner", "verified", "bytes", "a", "the"]
HIDDEN, INTERMEDIATE, LAYERS, HEADS = 16, 32, 2, 2


def llama_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    v, h, i = len(VOCAB), HIDDEN, INTERMEDIATE

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    out = {"model.embed_tokens.weight": w(v, h), "model.norm.weight": np.ones(h, np.float32), "lm_head.weight": w(v, h)}
    for n in range(LAYERS):
        p = f"model.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[p + f"self_attn.{proj}.weight"] = w(h, h)
        out[p + "mlp.gate_proj.weight"] = w(i, h)
        out[p + "mlp.up_proj.weight"] = w(i, h)
        out[p + "mlp.down_proj.weight"] = w(h, i)
        out[p + "input_layernorm.weight"] = np.ones(h, np.float32)
        out[p + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
    return out


def tiny_llama_repo() -> dict[str, bytes]:
    """A two-shard llama repo: config, a real (word-level) tokenizer, safetensors shards and their index."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=1,
    )
    config.architectures = ["LlamaForCausalLM"]
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tensors = llama_tensors()
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    files: dict[str, bytes] = {
        "config.json": config.to_json_string().encode(),
        "tokenizer.json": tokenizer.to_str().encode(),
        "tokenizer_config.json": json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "pad_token": "[PAD]"}
        ).encode(),
    }
    weight_map = {}
    for shard, members in shards.items():
        files[shard] = save({n: tensors[n] for n in members}, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(members, shard))
    total = sum(t.nbytes for t in tensors.values())
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}
    ).encode()
    return files


def check_view(view: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(view)
    assert config.model_type == "llama" and config.num_hidden_layers == LAYERS
    tokenizer = AutoTokenizer.from_pretrained(view)
    assert tokenizer("hello world")["input_ids"] == [VOCAB.index("hello"), VOCAB.index("world")]
    index = json.loads((view / "model.safetensors.index.json").read_text())
    seen = 0
    for name, shard in index["weight_map"].items():
        with safe_open(view / shard, framework="numpy") as f:
            assert name in set(f.keys()), f"{name} missing from {shard}"
            tensor = f.get_tensor(name)
            seen += tensor.nbytes
    assert seen == index["metadata"]["total_size"]


def write_repo(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def repo_files() -> dict[str, bytes]:
    return tiny_llama_repo()


def test_every_source_gives_a_view_the_loaders_accept(
    repo_files: dict[str, bytes], hub: Any, s3: Any, registry: Any, tmp_path: Path, cache_dir: Path
) -> None:
    views: dict[str, Path] = {}
    local = write_repo(tmp_path / "local-repo", repo_files)
    made = run_cli("ensure", str(local), "--json", cache_dir=cache_dir)
    assert made.code == 0, made.stderr
    views["local"] = Path(made.json()["local_path"])
    hub.add_repo("org/tiny-llama", repo_files)
    env = {"HF_ENDPOINT": hub.url}
    from_hub = run_cli("ensure", "hf:org/tiny-llama", "--json", cache_dir=cache_dir, env=env)
    assert from_hub.code == 0, from_hub.stderr
    views["hf"] = Path(from_hub.json()["local_path"])
    client = s3.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket="models")
    for name, data in repo_files.items():
        client.put_object(Bucket="models", Key=f"tiny-llama/{name}", Body=data, ChecksumAlgorithm="SHA256")
    from_s3 = run_cli("ensure", "s3://models/tiny-llama/", "--json", cache_dir=cache_dir)
    assert from_s3.code == 0, from_s3.stderr
    views["s3"] = Path(from_s3.json()["local_path"])
    pushed = run_cli(
        "push", "hf:org/tiny-llama", f"oci://{registry.host}/conformance/tiny:v1", cache_dir=cache_dir, env=env
    )
    assert pushed.code == 0, pushed.stderr
    from_oci = run_cli("ensure", f"oci://{registry.host}/conformance/tiny:v1", "--json", cache_dir=tmp_path / "c2")
    assert from_oci.code == 0, from_oci.stderr
    views["oci"] = Path(from_oci.json()["local_path"])
    digests = {
        run_cli("inspect", str(local), "--json", cache_dir=cache_dir).json()["digest"],
        from_hub.json()["digest"],
        from_s3.json()["digest"],
        from_oci.json()["digest"],
    }
    assert len(digests) == 1, digests  # one repo digest, whatever the source
    for source, view in views.items():
        assert view.is_dir(), (source, view)
        check_view(view)


@pytest.mark.slow
def test_the_view_builds_a_model_that_generates(repo_files: dict[str, bytes], tmp_path: Path, cache_dir: Path) -> None:
    torch = pytest.importorskip("torch", reason="CPU torch (pip install torch==2.13.0) runs the slow test")
    from transformers import AutoModelForCausalLM

    local = write_repo(tmp_path / "repo", repo_files)
    made = run_cli("ensure", str(local), "--json", cache_dir=cache_dir)
    assert made.code == 0, made.stderr
    view = Path(made.json()["local_path"])
    loaded: Any = AutoModelForCausalLM.from_pretrained(view, output_loading_info=True)
    model, info = loaded
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    out = model.generate(torch.tensor([[VOCAB.index("hello")]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 5)
