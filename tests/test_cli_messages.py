"""What the CLI and the library say: every command says what happened, model configs take lists and the
CLI's spellings, the core install is small and names each missing extra, the library prints nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXAMPLE_GGUF, ROOT, run_cli
from .helpers import digest_of, safetensors_bytes


# ------------------------------------------------------ 6. verify, rm and ensure say what really happened
@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_verify_rm_and_ensure_say_what_happened(cli: Any, tmp_path: Path, make_gguf: Any) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    not_gguf = tmp_path / "fake.gguf"
    not_gguf.write_bytes(b"<html>not a model</html>")
    for bad in (empty, not_gguf):
        assert cli("ensure", str(bad)).code == 4
        verified = cli("verify", str(bad))
        assert verified.code == 4 and verified.stdout.startswith("FAILED") and "ok" not in verified.stdout.split()[0]
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "config.json").write_text("{}")

    (tree / "model.safetensors").write_bytes(safetensors_bytes(100))
    assert cli("ensure", str(tree)).code == 0
    good = make_gguf("good.gguf")
    assert cli("ensure", str(good)).code == 0
    every = cli("verify", str(tree), str(good))
    assert every.code == 0, every.stdout
    assert all(f"file:{p}" in every.stdout for p in (tree, good)), every.stdout
    notes = tmp_path / "readme.txt"
    notes.write_text("just notes\n")
    ensured = cli("ensure", str(notes))
    assert ensured.code == 0 and "no model format recognised" in ensured.stderr, ensured.stderr
    assert cli("inspect", str(notes), "--json").json()["metadata"]["format"] == "file"
    removed = cli("rm", str(notes))
    assert removed.code == 0 and "forgot" in removed.stdout and "stays where it is" in removed.stdout
    assert notes.read_text() == "just notes\n"


# --------------------------------------------------------------- 12. a small core, extras by name
def _run_without(modules: list[str], *args: str, cache_dir: Path) -> Any:
    import os
    import subprocess
    import sys

    block = "; ".join(f"sys.modules[{m!r}] = None" for m in modules)
    code = f"import sys; {block}; from model_provisioner.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "--cache-dir", str(cache_dir), *args],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=60,
    )


def test_the_core_install_is_small_and_each_missing_extra_is_named(
    cache_dir: Path, tmp_path: Path, gguf_file: Path
) -> None:
    import tomllib

    from .conftest import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = sorted(d.split(">")[0].split("=")[0].split("[")[0].strip() for d in project["dependencies"])
    assert core == ["Jinja2", "PyYAML", "httpx", "huggingface_hub", "rich"]
    extras = project["optional-dependencies"]
    assert {"s3", "oci", "triton", "server", "signing", "bom", "all"} <= set(extras)
    # a local GGUF needs nothing else
    plain = _run_without(
        ["boto3", "botocore", "fastapi", "uvicorn", "prometheus_client", "zstandard", "tritonclient", "model_signing"],
        "ensure",
        str(gguf_file),
        cache_dir=cache_dir,
    )
    assert plain.returncode == 0, plain.stderr
    for modules, args, extra in (
        (["boto3"], ["ensure", "s3://bucket/key.gguf"], "s3"),
        (["fastapi"], ["serve", "--port", "1"], "server"),
        (
            ["model_signing"],
            ["ensure", str(gguf_file), "--require-signature", "--signature-key", str(gguf_file)],
            "signing",
        ),
        (["cyclonedx"], ["inspect", str(gguf_file), "--bom", "-"], "bom"),
    ):
        result = _run_without(modules, *args, cache_dir=cache_dir)
        assert result.returncode == 2, (extra, result.stderr)
        assert f"pip install 'model-provisioner[{extra}]'" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# ------------------------------------------------------------- 10. model configs: documented, lists, output
def test_a_model_config_with_a_list_and_cli_spellings(cli: Any, tmp_path: Path, make_gguf: Any) -> None:
    first = make_gguf("a.gguf", context_length=1024)
    config = tmp_path / "models" / "models.yaml"
    config.write_text(
        "models:\n"
        f"  - ref: ./a.gguf\n    digest: {digest_of(first.read_bytes())}\n"  # relative to the config's folder
        f"  - model_ref: {tmp_path / 'models' / 'tree'}\n    engine: vllm\n"
    )
    tree = tmp_path / "models" / "tree"
    tree.mkdir()
    (tree / "config.json").write_text('{"model_type": "llama"}')

    (tree / "model.safetensors").write_bytes(safetensors_bytes(100))
    out = tmp_path / "out"
    result = cli("provision", "--config", str(config), "--out", str(out), "--json")
    assert result.code == 0, result.stderr
    answers = result.json()["models"]
    assert [a["engine"] for a in answers] == ["llamacpp", "vllm"]
    assert all(Path(a["handoff"]).is_file() for a in answers)
    assert Path(answers[0]["handoff"]) == out / ".runtime" / "engines" / "llamacpp.json"
    text = cli("provision", "--config", str(config), "--out", str(out))
    assert text.code == 0 and "llamacpp.json" in text.stderr + text.stdout
    clash = tmp_path / "clash.yaml"
    clash.write_text(f"models:\n  - model_ref: {first}\n  - model_ref: {first}\n")
    refused = cli("provision", "--config", str(clash), "--out", str(out))
    assert refused.code == 2 and "llamacpp.json" in refused.stderr, refused.stderr
    missing = cli("provision", "--config", str(tmp_path / "absent.yaml"), "--out", str(out))
    assert missing.code == 3 and "absent.yaml" in missing.stderr


# ------------------------------------------------------------------ 14. output that says what happened
@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_refresh_mirror_inspect_and_durations_say_what_happened(
    cli: Any, fileserver: Any, tmp_path: Path, settings_file: Any, gguf_file: Path
) -> None:
    url = fileserver.put("r.gguf", EXAMPLE_GGUF.read_bytes())
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file())}
    assert cli("ensure", url, env=env).code == 0
    same = cli("ensure", url, "--refresh", env=env)
    assert same.code == 0 and "not modified" in same.stderr, same.stderr
    fileserver.put("r.gguf", EXAMPLE_GGUF.read_bytes()[:-1] + b"Z")
    changed = cli("ensure", url, "--refresh", env=env)
    assert changed.code == 0 and "changed at the source" in changed.stderr, changed.stderr
    assert cli("ensure", str(gguf_file)).code == 0
    inspected = cli("inspect", str(gguf_file))
    assert "None" not in inspected.stdout and "T" in inspected.stdout.split("last_used:")[1].split("\n")[0]
    bare = cli("gc", "--grace", "5")
    assert bare.code == 2 and "unit" in bare.stderr, bare.stderr
    assert cli("gc", "--grace", "5m").code == 0


def test_the_library_prints_nothing_by_itself(tmp_path: Path, gguf_file: Path) -> None:
    import subprocess
    import sys

    code = (
        "from model_provisioner import ModelProvisioner\n"
        f"with ModelProvisioner.file_only({str(tmp_path / 'c')!r}) as p: p.ensure_present({str(gguf_file)!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_the_api_reference_documents_every_public_method_as_its_docstring_says() -> None:
    """docs/reference/ is generated by scripts/api_reference.py (pdoc); a public method added, or a summary line
    changed, without regenerating it fails here. Each public method says what it raises where it raises."""
    import html
    import inspect
    import re

    from model_provisioner import ModelProvisioner

    raw = (ROOT / "docs" / "reference" / "model_provisioner" / "api" / "provisioner.html").read_text()
    # compared without markup or whitespace: pdoc turns ``code`` into <code> and spaces tokens apart
    page = "".join(html.unescape(re.sub(r"<[^>]+>", "", raw)).split())
    words = lambda text: "".join(text.replace("`", "").split())  # noqa: E731
    methods = [
        name
        for name, member in inspect.getmembers(ModelProvisioner, inspect.isfunction)
        if not name.startswith("_") and member.__qualname__.startswith("ModelProvisioner.")
    ]
    assert {"ensure_present", "verify", "register_model", "evict", "gc"} <= set(methods)
    for name in methods:
        doc = inspect.getdoc(getattr(ModelProvisioner, name))
        assert doc, f"ModelProvisioner.{name} has no docstring"
        assert f"def{name}(" in page, f"{name} is not in the API reference"
        assert words(doc.splitlines()[0]) in words(page), f"{name}'s summary is stale: run scripts/api_reference.py"
    for name in ("ensure_present", "verify", "register_model", "evict", "gc"):
        assert "Raises:" in (inspect.getdoc(getattr(ModelProvisioner, name)) or ""), name


def test_help_groups_the_commands_and_every_option_says_what_it_does() -> None:
    import argparse

    from model_provisioner.cli.grouped_help import COMMAND_GROUPS
    from model_provisioner.cli.parser import build_parser

    done = run_cli("--help")
    assert done.code == 0
    text = done.stdout
    assert "==SUPPRESS==" not in text and "engine-supervise" not in text
    for group, names in COMMAND_GROUPS.items():
        assert f"\n{group}:\n" in text and all(f"\n  {name} " in text for name in names)
    assert "9 engine failed" in text and "143 terminated (SIGTERM)" in text and "COMMAND ..." in text
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = {name for names in COMMAND_GROUPS.values() for name in names}
    assert set(commands.choices) - listed == {"engine-supervise"}  # every command is in a group

    def undocumented(p: argparse.ArgumentParser, where: str) -> list[str]:
        out = []
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    out += undocumented(child, f"{where} {name}")
            elif not action.help:
                out.append(f"{where} {'/'.join(action.option_strings) or action.dest}")
        return out

    assert undocumented(parser, "model-provisioner") == []


def test_a_refused_rm_suggests_commands_that_run_as_printed(tmp_path: Path, make_gguf: Any) -> None:
    import shlex
    import subprocess
    import sys

    from model_provisioner.ops.leases import ending_command
    from model_provisioner.server.schemas import in_api_terms
    from model_provisioner.storage.catalog import Lease

    model = make_gguf("m.gguf")
    cache = tmp_path / "my cache"  # a path that needs quoting
    assert run_cli("-q", "ensure", str(model), cache_dir=cache).code == 0
    leases = [run_cli("lease", str(model), "--holder", f"job{i}", cache_dir=cache).stdout.strip() for i in (1, 2)]
    refused = run_cli("rm", f"file:{model}", cache_dir=cache)
    assert refused.code == 5 and "pid None" not in refused.stderr
    suggested = refused.stderr.split("end them (", 1)[1].rsplit(") or use --force", 1)[0]
    assert suggested.count("release") == 2 and all(lease in suggested for lease in leases)
    assert suggested.count(f"--cache-dir {shlex.quote(str(cache))}") == 2  # the cache this command used
    env_bin = str(Path(sys.executable).parent)
    shell = subprocess.run(
        suggested.replace("model-provisioner", f"{sys.executable} -m model_provisioner"),
        shell=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": env_bin + os.pathsep + os.environ["PATH"]},
    )
    assert shell.returncode == 0, shell.stderr
    assert run_cli("rm", f"file:{model}", cache_dir=cache).code == 0
    # an engine's lease is ended by stopping its pool; through the API, by the API's own request
    engine = Lease("abc123", "file:/m.gguf", "engine pool gw-1f2e3d4c5b6a", "host", 0, pid=1)
    assert ending_command(engine) == "model-provisioner down --pool gw-1f2e3d4c5b6a"
    assert in_api_terms("(model-provisioner down --pool p1) or") == "(DELETE /v1/engines/p1) or"
    assert in_api_terms("end it (model-provisioner release abc123) or") == "end it (DELETE /v1/leases/abc123) or"


def complete_in(shell: str, script: Path, line: str) -> list[str]:
    """What ``shell`` offers for the words of ``line`` (the last one being completed), from the generated script."""
    import shlex
    import shutil
    import subprocess

    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed (scripts/test.sh installs it)")
    words = line.split(" ")
    if shell == "fish":
        code = f"source {script}; complete -C {shlex.quote(line)}"
        out = subprocess.run(["fish", "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [row.split("\t", 1)[0] for row in out.stdout.splitlines()]
    array = " ".join(shlex.quote(w) for w in words)
    prelude = "setopt ksharrays; " if shell == "zsh" else ""
    state = f"COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}"
    code = f'source {script}; {prelude}{state}; _model_provisioner; echo "${{COMPREPLY[@]}}"'
    out = subprocess.run([shell, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_offer_commands_options_and_choices(shell: str, tmp_path: Path) -> None:
    """Issue 26 item 16: generated from the parser (static: completing never starts the program)."""
    made = run_cli("completion", shell)
    assert made.code == 0 and "$(model-provisioner" not in made.stdout  # never runs the program to complete
    script = tmp_path / f"completion.{shell}"
    script.write_text(made.stdout)
    first = complete_in(shell, script, "model-provisioner en")
    assert {"ensure", "engines"} <= set(first)
    assert "engine-supervise" not in complete_in(shell, script, "model-provisioner ")
    assert "--engine" in complete_in(shell, script, "model-provisioner --cache-dir /tmp/x up --eng")
    if shell != "zsh":  # zsh filters what the function offers itself; bash and fish are asked for the filtered list
        assert set(first) == {"ensure", "engines"}
        assert set(complete_in(shell, script, "model-provisioner up --engine ")) == {"llamacpp", "triton"}
        assert {"install", "installed"} <= set(complete_in(shell, script, "model-provisioner engines inst"))
