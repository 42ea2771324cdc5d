"""Secrets never reach output, logs, errors or the catalog: redacted by value (what is in use) and by shape;
names that only look like tokens are kept as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .conftest import EXAMPLE_GGUF, run_cli


# -------------------------------------------------------- 2. redaction rewrites secrets, never names
def test_names_that_look_like_tokens_are_stored_as_they_are(
    cli: Any, tmp_path: Path, cache_dir: Path, settings_file: Any
) -> None:
    model = tmp_path / "hf_tinyllama.gguf"
    model.write_bytes(EXAMPLE_GGUF.read_bytes())
    out = tmp_path / "out"
    ensured = cli("ensure", str(model), "--json", "--handoff-dir", str(out))
    assert ensured.code == 0 and ensured.json()["id"] == f"file:{model}"
    listed = cli("ls", "--json").json()["models"]
    assert listed[0]["id"] == f"file:{model}"
    provenance = (out / ".runtime" / "provenance" / "models.jsonl").read_text()
    assert "hf_tinyllama.gguf" in provenance and "***" not in provenance
    raw = b"".join(p.read_bytes() for p in cache_dir.glob("catalog.db*"))
    assert b"hf_tinyllama.gguf" in raw and b"***" not in raw
    bad = settings_file(hf_endpoit="x")
    unknown = run_cli("ls", cache_dir=cache_dir, env={"MODEL_PROVISIONER_SETTINGS": str(bad)})
    assert unknown.code == 2 and "hf_endpoint" in unknown.stderr and "***" not in unknown.stderr


def test_secrets_in_use_are_redacted_by_value_and_shape(tmp_path: Path) -> None:
    from model_provisioner import Settings
    from model_provisioner.core.redact import redact_text

    shapeless = "Tok3n-w1thout-any-shape"  # no known token shape: redacted because it is in use
    Settings.from_env(
        {"HF_TOKEN": shapeless, "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCY"}, cache_dir=tmp_path
    )
    text = f"GET failed with {shapeless}; key wJalrXUtnFEMI/K7MDENG/bPxRfiCY; hf_{'A' * 34} in ./hf_tinyllama.gguf"
    assert redact_text(text) == "GET failed with ***; key ***; *** in ./hf_tinyllama.gguf"


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
