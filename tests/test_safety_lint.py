"""The safety lint before an engine loads a model (issue 28 item 3; docs/verification.md): hostile GGUF headers and
chat templates are refused before any engine starts, naming what was found; models that are fine still run."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from model_provisioner.formats.gguf import read_gguf
from model_provisioner.formats.gguf_lint import lint_gguf
from model_provisioner.formats.template_lint import template_problems

from .conftest import ROOT, build_test_engines, run_cli
from .helpers import processes_running

sys.path.insert(0, str(ROOT / "examples"))
EXAMPLE = ROOT / "examples" / "tiny-runnable-llama.gguf"

#: what llama.cpp's own templates look like (namespace, loops, tests, string methods, raise_exception, strftime)
BENIGN = """{%- set ns = namespace(system='') -%}
{%- for m in messages -%}
  {%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] | trim -%}
  {%- elif m['role'] not in ['user', 'assistant'] -%}{{ raise_exception('unknown role ' + m['role']) }}
  {%- else -%}<|{{ m.role }}|>{{ m.content.strip() | replace('\\n\\n', '\\n') }}{{ eos_token }}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|assistant|>{{ strftime_now('%d %b %Y') }}{%- endif -%}"""


@pytest.mark.parametrize(
    ("template", "named"),
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", ".__class__"),
        ("{{ cycler.__init__.__globals__.os.popen('id').read() }}", "'cycler'"),
        ("{{ lipsum['__globals__'] }}", "'lipsum'"),
        ("{{ messages|attr('__class__') }}", "|attr"),
        ("{% for c in [].__class__.__base__.__subclasses__() %}{% endfor %}", ".__class__"),
        ("{{ self._TemplateReference__context }}", "'self'"),
        ("{{ x.mro() }}", ".mro"),
        ("{{ (messages.func_globals) }}", ".func_globals"),
        ("{% if %}", "does not parse"),
    ],
)
def test_a_template_that_reaches_python_is_refused_naming_the_construct(template: str, named: str) -> None:
    problems = template_problems(template)
    assert problems and named in " ".join(problems), problems


def test_what_chat_templates_use_passes() -> None:
    assert template_problems(BENIGN) == []
    assert template_problems("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}") == []


def _patched(tmp_path: Path, name: str, tensor: str, offset: int) -> Path:
    """The example with one tensor info's data offset changed (found by its name in the tensor table)."""
    data = bytearray(EXAMPLE.read_bytes())
    info = read_gguf(EXAMPLE, tensors=True)
    target = next(t for t in info.tensors if t.name == tensor)
    encoded = struct.pack("<Q", len(tensor)) + tensor.encode()
    at = data.index(encoded, 0, info.data_start) + len(encoded)
    at += 4 + 8 * len(target.dims) + 4  # n_dims, dims, type: then the offset
    assert struct.unpack_from("<Q", data, at)[0] == target.offset
    struct.pack_into("<Q", data, at, offset)
    out = tmp_path / name
    out.write_bytes(bytes(data))
    return out


def test_overlapping_and_misaligned_tensors_are_found_from_the_header(tmp_path: Path) -> None:
    assert lint_gguf(read_gguf(EXAMPLE, tensors=True)).ok
    overlapping = _patched(tmp_path, "overlap.gguf", "blk.0.attn_q.weight", 0)
    found = lint_gguf(read_gguf(overlapping, tensors=True)).problems
    assert any("overlap" in p and "blk.0.attn_q.weight" in p for p in found), found
    misaligned = _patched(tmp_path, "misaligned.gguf", "output_norm.weight", 33)
    found = lint_gguf(read_gguf(misaligned, tensors=True)).problems
    assert any("not aligned to 32" in p for p in found), found


@pytest.mark.slow  # real engines
def test_up_refuses_a_hostile_model_before_any_engine_starts_and_warn_lets_it_run(
    llama_server: str, tmp_path: Path, cache_dir: Path
) -> None:
    from make_runnable_gguf import write_runnable_gguf

    vocab = build_test_engines.test_vocab(tmp_path)
    hostile = write_runnable_gguf(
        vocab, tmp_path / "hostile.gguf", tied=True, chat_template="{{ ''.__class__.__mro__[1].__subclasses__() }}"
    )
    shown = run_cli("inspect", str(hostile), cache_dir=cache_dir)
    assert "safety lint: REFUSED" in shown.stdout and ".__class__" in shown.stdout, shown.stdout
    refused = run_cli("up", str(hostile), "--binary", llama_server, "--pool", "lint", cache_dir=cache_dir)
    assert refused.code == 4, refused.stderr
    assert "refused before llama-server loads it" in refused.stderr and ".__class__" in refused.stderr
    assert "engines.safety_lint: warn" in refused.stderr
    assert processes_running(str(hostile)) == []
    overlapping = _patched(tmp_path, "overlap.gguf", "blk.0.attn_q.weight", 0)
    refused = run_cli("up", str(overlapping), "--binary", llama_server, "--pool", "lint", cache_dir=cache_dir)
    assert refused.code == 4 and "overlap" in refused.stderr, refused.stderr
    # lowered to a warning by the operator: a suspicious template (harmless here) starts
    suspicious = write_runnable_gguf(
        vocab,
        tmp_path / "suspicious.gguf",
        tied=True,
        chat_template="{% if lipsum is defined %}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}",
    )
    settings = tmp_path / "warn.json"
    settings.write_text(json.dumps({"engines": {"safety_lint": "warn"}}))
    env: dict[str, Any] = {"MODEL_PROVISIONER_SETTINGS": str(settings)}
    assert run_cli("up", str(suspicious), "--binary", llama_server, "--pool", "lint", cache_dir=cache_dir).code == 4
    started = run_cli("up", str(suspicious), "--binary", llama_server, "--pool", "lint", cache_dir=cache_dir, env=env)
    try:
        assert started.code == 0 and "starting it anyway" in started.stderr, started.stderr
    finally:
        run_cli("down", "--pool", "lint", cache_dir=cache_dir)
