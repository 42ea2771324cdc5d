"""Config files, engine handoff and provenance (DESIGN §5)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from model_provisioner import (
    ConfigError,
    DigestMismatch,
    ModelProvisioner,
    Settings,
    load_model_config,
    provision_from_config_to_default_handoff,
)

from .conftest import run_cli
from .helpers import cdn_bytes, transformers_repo


def digest_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["yaml", "json"])
@pytest.mark.parametrize("digest_form", ["string", "mapping"])
def test_config_to_default_handoff(
    provisioner: ModelProvisioner, gguf_file: Path, tmp_path: Path, fmt: str, digest_form: str
) -> None:
    hex_ = digest_of(gguf_file)
    digest: Any = f"sha256:{hex_}" if digest_form == "string" else {"algo": "sha256", "value": hex_}
    data = {"model_ref": "models/tiny.gguf", "expected_digest": digest}  # relative to the config file
    config = tmp_path / f"model.{fmt}"
    if fmt == "json":
        config.write_text(json.dumps(data))
    else:
        import yaml

        config.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    resolved = provision_from_config_to_default_handoff(config, out, provisioner, correlation_id="corr-123")
    assert resolved.verification == "verified"
    handoff = json.loads((out / ".runtime/engines/llamacpp.json").read_text())
    assert handoff["model"] == {"id": f"file:{gguf_file}", "path": str(gguf_file)}
    assert handoff["metadata"]["size_bytes"] == gguf_file.stat().st_size
    assert handoff["metadata"]["ctx_max"] == 4096
    assert handoff["metadata"]["digest"] == f"sha256:{hex_}"
    assert handoff["metadata"]["format"] == "gguf"
    record = json.loads((out / ".runtime/provenance/models.jsonl").read_text().splitlines()[-1])
    for key in (
        "timestamp",
        "model_id",
        "path",
        "digest",
        "verification",
        "source",
        "bytes_fetched",
        "duration_ms",
        "correlation_id",
    ):
        assert key in record
    assert record["correlation_id"] == "corr-123" and record["verification"] == "verified"


def test_config_mismatch_is_strict_unless_disabled(
    provisioner: ModelProvisioner, gguf_file: Path, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"model_ref: {gguf_file}\nexpected_digest: sha256:{'0' * 64}\n")
    with pytest.raises(DigestMismatch):
        provision_from_config_to_default_handoff(config, tmp_path / "out", provisioner)
    assert not (tmp_path / "out/.runtime/engines/llamacpp.json").exists()
    config.write_text(f"model_ref: {gguf_file}\nexpected_digest: sha256:{'0' * 64}\nstrict_verification: false\n")
    resolved = provision_from_config_to_default_handoff(config, tmp_path / "out", provisioner)
    assert resolved.verification == "mismatch_advisory"
    assert (tmp_path / "out/.runtime/engines/llamacpp.json").exists()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("model_ref: [1, 2]\n", "model_ref"),
        ("expected_digest: sha256:abc\n", "model_ref"),
        ("model_ref: hf:org\n", "model_ref"),
        ("model_ref: ./m.gguf\nexpected_digest: sha256:xyz\n", "expected_digest"),
        ("model_ref: ./m.gguf\nexpected_digest: {algo: md5, value: abc}\n", "expected_digest"),
        ("model_ref: ./m.gguf\nstrict_verification: maybe\n", "strict_verification"),
        ("model_ref: ./m.gguf\nengine: tensorrt\n", "engine"),
        ("model_ref: ./m.gguf\nmodle_ref: typo\n", "modle_ref"),
    ],
)
def test_config_errors_name_the_file_and_the_field(tmp_path: Path, text: str, field: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_model_config(config)
    assert str(config) in str(info.value) and repr(field) in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("text", ["model_ref: [unclosed\n", "- a list\n", "just a string\n", ""])
def test_malformed_config_files(tmp_path: Path, text: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=str(config)):
        load_model_config(config)


def test_settings_file_is_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("max_parallel_fetches: two\n")
    monkeypatch.setenv("MODEL_PROVISIONER_SETTINGS", str(settings))
    with pytest.raises(ConfigError, match="max_parallel_fetches"):
        Settings.from_env()
    settings.write_text("max_parallel_fetches: 2\noffline: true\n")
    loaded = Settings.from_env()
    assert loaded.max_parallel_fetches == 2 and loaded.offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings.write_text("{}\n")
    assert Settings.from_env().offline


def test_cli_provision(cli: Any, gguf_file: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model_ref": str(gguf_file), "expected_digest": f"sha256:{digest_of(gguf_file)}"}))
    result = cli("provision", "--config", str(config), "--out", str(tmp_path / "o"), "--json")
    assert result.code == 0, result.stderr
    assert result.json()["models"][0]["lifecycle"] == "Active"
    assert (tmp_path / "o/.runtime/engines/llamacpp.json").exists()


def test_handoff_refuses_an_engine_that_cannot_load_the_format(cli: Any, tmp_path: Path) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07" + b"\x00" * 100)
    result = cli("ensure", str(onnx), "--handoff-dir", str(tmp_path / "o"), "--engine", "llamacpp")
    assert result.code == 2 and "cannot load" in result.stderr
    assert not (tmp_path / "o/.runtime/engines/llamacpp.json").exists()


# ------------------------------------------------- 4. allow_remote_code is the setting in force, every time
@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
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
