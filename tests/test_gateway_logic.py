"""The gateway's pure parts (issue 25): its settings, the memory estimate's arithmetic, memory admission, what a
request's ``model`` and ``keep_alive`` mean. The behaviour with real engines is in test_gateway.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model_provisioner import Settings
from model_provisioner.config.gateway import GatewaySettings, parse_gateway
from model_provisioner.core.errors import ConfigError, InsufficientMemory, InvalidInput, NotFound, PolicyDenied
from model_provisioner.engines.admission import Loaded, room, to_evict
from model_provisioner.engines.targets import target_of
from model_provisioner.formats.gguf import read_gguf
from model_provisioner.formats.memory import MemoryEstimate, ModelShape, element_bytes, estimate
from model_provisioner.server.routes_openai import keep_alive_of

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def test_the_settings_file_gives_the_gateway_and_its_models(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            {
                "gateway": {"max_loaded": 2, "keep_alive": "10m", "memory_reserve": "2GiB", "memory_limit": 1000},
                "models": [
                    {"alias": "tiny", "ref": "hf:org/repo:Q4_K_M", "flags": ["--ctx-size", 2048], "keep_alive": -1}
                ],
            }
        )
    )
    gateway = Settings.from_env({"MODEL_PROVISIONER_SETTINGS": str(path)}).gateway
    assert (gateway.max_loaded, gateway.keep_alive_s, gateway.memory_reserve_bytes) == (2, 600.0, 2 << 30)
    assert gateway.memory_limit_bytes == 1000
    model = gateway.model("tiny")
    assert model is not None and model.flags == ("--ctx-size", "2048") and model.keep_alive_s == -1


@pytest.mark.parametrize(
    ("gateway", "models", "field"),
    [
        ({"max_loaded": 0}, None, "gateway.max_loaded"),
        ({"keep_alive": "soon"}, None, "gateway.keep_alive"),
        ({"memory_reserve": "lots"}, None, "gateway.memory_reserve"),
        ({"max_loded": 2}, None, "gateway.max_loded"),
        ({}, [{"alias": "../x", "ref": "a.gguf"}], "models[0].alias"),
        ({}, [{"alias": "x", "ref": "a.gguf"}, {"alias": "x", "ref": "b.gguf"}], "models[1].alias"),
        ({}, [{"alias": "x"}], "models[0]"),
        ({}, [{"alias": "x", "ref": "a.gguf", "flags": "--ctx-size 4"}], "models[0].flags"),
    ],
)
def test_a_wrong_gateway_setting_names_its_field(gateway: dict[str, Any], models: Any, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_gateway("settings.yaml", gateway, models)


def test_the_kv_cache_is_layers_by_kv_heads_by_head_size_by_context() -> None:
    shape = ModelShape.from_gguf([read_gguf(ROOT / "examples" / "tiny-runnable-llama.gguf")])
    assert shape is not None
    assert (shape.layers, shape.embedding, shape.heads, shape.kv_heads, shape.vocab) == (2, 64, 4, 4, 32000)
    at_256 = estimate(shape, 256)
    assert at_256.kv_cache == 2 * 2 * 4 * 16 * 256 * 2  # K and V, layers, KV heads, head size, cells, f16
    assert estimate(shape, 1024).kv_cache == 4 * at_256.kv_cache
    assert estimate(shape, 256, cache_type_k="q8_0", cache_type_v="q8_0").kv_cache < at_256.kv_cache
    assert element_bytes("q8_0") == 34 / 32 and element_bytes("unknown") == 2.0
    assert estimate(shape, 256, parallel=4).output == 4 * at_256.output == 4 * 32000 * 4
    assert at_256.weights == shape.weights_bytes > 4 * MIB


def test_a_header_without_the_keys_has_no_estimate() -> None:
    assert ModelShape.from_gguf([]) is None
    from model_provisioner.formats.gguf import GGUFInfo

    assert ModelShape.from_gguf([GGUFInfo(3, 0, {"general.architecture": "clip"})]) is None


def need(total_mib: int, weights_mib: int = 0) -> MemoryEstimate:
    return MemoryEstimate(
        ctx=512, weights=weights_mib * MIB, kv_cache=(total_mib - weights_mib) * MIB, compute=0, output=0
    )


def test_admission_unloads_idle_models_least_recently_used_first() -> None:
    settings = GatewaySettings(memory_reserve_bytes=100 * MIB)
    loaded = [Loaded("old", need(300, 200), idle=True), Loaded("new", need(300, 200), idle=True)]
    # 1000 available - 100 reserve - 400 of mapped weights = 500 free
    assert room(settings, 1000 * MIB, loaded) == 500 * MIB
    assert to_evict("m", need(500), settings, 1000 * MIB, loaded) == []
    assert to_evict("m", need(600), settings, 1000 * MIB, loaded) == ["old"]
    assert to_evict("m", need(900), settings, 1000 * MIB, loaded) == ["old", "new"]


def test_admission_refuses_with_both_numbers_when_busy_models_hold_the_memory() -> None:
    settings = GatewaySettings(memory_reserve_bytes=100 * MIB)
    loaded = [Loaded("busy", need(300, 200), idle=False), Loaded("idle", need(300, 200), idle=True)]
    with pytest.raises(InsufficientMemory) as refused:
        to_evict("big", need(800), settings, 1000 * MIB, loaded)
    message = str(refused.value)
    assert "'big' needs ~800.0 MiB" in message and "only 700.0 MiB is free" in message
    assert "reserve 100.0 MiB" in message and "1 busy loaded model" in message


def test_the_operators_limit_counts_what_loaded_models_need() -> None:
    settings = GatewaySettings(memory_reserve_bytes=0, memory_limit_bytes=1000 * MIB)
    loaded = [Loaded("a", need(600, 100), idle=True)]
    assert room(settings, 10_000 * MIB, loaded) == 400 * MIB
    assert to_evict("b", need(500), settings, 10_000 * MIB, loaded) == ["a"]
    with pytest.raises(InsufficientMemory, match=r"memory_limit 1000\.0 MiB"):
        to_evict("b", need(1100), settings, 10_000 * MIB, loaded)


@pytest.mark.parametrize(("given", "seconds"), [(None, None), (0, 0.0), ("5m", 300.0), (-1, -1.0), (30, 30.0)])
def test_keep_alive_as_ollama_takes_it(given: Any, seconds: float | None) -> None:
    assert keep_alive_of(given) == seconds


@pytest.mark.parametrize("given", ["soon", True, [1], {"s": 1}])
def test_a_wrong_keep_alive_is_invalid_input(given: Any) -> None:
    with pytest.raises(InvalidInput, match="keep_alive"):
        keep_alive_of(given)


def test_a_requests_model_is_an_alias_an_id_or_a_ref_under_the_api_rules(tmp_path: Path) -> None:
    settings = parse_gateway("s", {}, [{"alias": "tiny", "ref": str(tmp_path / "m.gguf"), "flags": ["-c", "64"]}])
    checked: list[str] = []

    def check(ref: str) -> None:
        checked.append(ref)
        if ref.startswith("/etc"):
            raise PolicyDenied("outside the roots")

    alias = target_of("tiny", settings, check)
    assert alias.model_id == f"file:{tmp_path / 'm.gguf'}" and alias.flags == ("-c", "64") and checked == []
    assert alias.pool.startswith("gw-") and len(alias.pool) == 15
    assert target_of(alias.model_id, settings, check).pool != alias.pool  # other flags: another engine
    with pytest.raises(NotFound, match="'llama3' is not an alias of this gateway \\(tiny\\)"):
        target_of("llama3", settings, check)
    with pytest.raises(PolicyDenied):
        target_of("/etc/passwd", settings, check)
    with pytest.raises(InvalidInput):
        target_of("x" * 5000, settings, check)
