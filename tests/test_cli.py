"""The CLI as a user runs it: exit codes, one-line errors, JSON contract (DESIGN §3)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXAMPLE_GGUF, run_cli

ENSURE_KEYS = {"id", "local_path", "digest", "size_bytes", "lifecycle", "engine", "metadata"}


def digest_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def test_ensure_json_contract(cli: Any, gguf_file: Path) -> None:
    result = cli("ensure", str(gguf_file), "--json")
    assert result.code == 0, result.stderr
    payload = result.json()
    assert set(payload) >= ENSURE_KEYS
    assert payload["id"] == f"file:{gguf_file}" and payload["local_path"] == str(gguf_file)
    assert payload["digest"] == digest_of(gguf_file) and payload["lifecycle"] == "Active"
    assert payload["metadata"]["ctx_max"] == 4096
    assert result.stdout.count("\n") == 1  # exactly one JSON object


def test_pull_alias_and_human_output(cli: Any, gguf_file: Path) -> None:
    result = cli("pull", str(gguf_file))
    assert result.code == 0
    assert result.stdout.strip() == str(gguf_file)  # stdout: just the path, for $(...)
    assert "no expected digest" in result.stderr  # advisory warning on stderr
    quiet = cli("-q", "ensure", str(gguf_file))
    assert quiet.code == 0 and quiet.stderr == ""


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_relative_tilde_file_and_local_forms_give_one_id(cli: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copy(EXAMPLE_GGUF, home / "m.gguf")
    env = {"HOME": str(home)}
    ids = set()
    for form in (
        "./m.gguf",
        "~/m.gguf",
        "file:m.gguf",
        f"file:{home}/m.gguf",
        f"local:{home}/m.gguf",
        f"file://{home}/m.gguf",
    ):
        result = cli("ensure", form, "--json", cwd=home, env=env)
        assert result.code == 0, (form, result.stderr)
        ids.add(result.json()["id"])
    assert ids == {f"file:{home}/m.gguf"}
    listing = cli("ls", "--json").json()["models"]
    assert [m["id"] for m in listing] == [f"file:{home}/m.gguf"]


def test_strict_mismatch_exit_4_entry_failed(cli: Any, gguf_file: Path) -> None:
    wrong = "sha256:" + "f" * 64
    result = cli("ensure", str(gguf_file), "--digest", wrong)
    assert result.code == 4
    assert_one_line_error(result.stderr, "digest mismatch", wrong, digest_of(gguf_file), str(gguf_file))
    entry = cli("inspect", str(gguf_file), "--json").json()
    assert entry["lifecycle"] == "Failed" and entry["verification"] == "mismatch"
    assert cli("locate", str(gguf_file)).code == 3


def test_advisory_mismatch_exit_0_with_warning(cli: Any, gguf_file: Path) -> None:
    result = cli("ensure", str(gguf_file), "--digest", "sha256:" + "e" * 64, "--no-strict", "--json")
    assert result.code == 0
    assert "advisory" in result.stderr or result.json()["verification"] == "mismatch_advisory"
    assert result.json()["lifecycle"] == "Active"


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (["ensure", "{missing}"], 3, ["not found", "{missing}"]),
        (["ensure", "{dir}"], 2, ["is a directory"]),
        (["ensure", "{empty}"], 4, ["empty"]),
        (["ensure", "{corrupt}"], 4, ["truncated GGUF"]),
        (["ensure", "{ggml}"], 2, ["legacy GGJT", "convert"]),
        (["ensure", "{model}", "--digest", "sha256:abc"], 2, ["invalid digest", "64"]),
        (["ensure", "{model}", "--digest", "md5:" + "a" * 32], 2, ["unsupported algorithm"]),
        (["ensure", "hf:org"], 2, ["invalid model reference 'hf:org'"]),
        (["ensure", "ftp://host/m.gguf"], 2, ["unsupported scheme"]),
        (["--offline", "ensure", "s3://bucket/m.gguf"], 5, ["s3://bucket/m.gguf", "offline"]),
        (["--offline", "ensure", "oci://registry.example/org/m:v1"], 5, ["registry.example", "offline"]),
        (["provision", "--config", "{badconfig}"], 2, ["{badconfig}", "expected_digest"]),
        (["provision", "--config", "{nofile}"], 3, ["{nofile}", "not found"]),  # a missing file is exit 3
        (["verify"], 2, ["--all"]),
        (["rm", "file:/nothing/*"], 3, ["nothing in the catalog"]),
        (["locate", "hf:org/repo/x.gguf"], 3, ["not provisioned"]),
        (["inspect", "hf:org/repo/x.gguf"], 3, ["not in the catalog"]),
    ],
)
def test_documented_exit_codes_and_one_line_errors(
    cli: Any, tmp_path: Path, gguf_file: Path, args: list[str], code: int, needles: list[str]
) -> None:
    paths = {
        "missing": tmp_path / "missing.gguf",
        "dir": tmp_path / "adir",
        "empty": tmp_path / "empty.gguf",
        "corrupt": tmp_path / "corrupt.gguf",
        "ggml": tmp_path / "old-ggml.bin",
        "model": gguf_file,
        "badconfig": tmp_path / "bad.yaml",
        "nofile": tmp_path / "nope.yaml",
    }
    paths["dir"].mkdir()
    paths["empty"].write_bytes(b"")
    paths["corrupt"].write_bytes(EXAMPLE_GGUF.read_bytes()[:500])
    paths["ggml"].write_bytes(b"tjgg" + b"\x00" * 32)
    paths["badconfig"].write_text(f"model_ref: {gguf_file}\nexpected_digest: sha256:nothex\n")
    fill = {k: str(v) for k, v in paths.items()}
    result = cli(*[a.format(**fill) for a in args])
    assert result.code == code, result.stderr
    assert_one_line_error(result.stderr, *[n.format(**fill) for n in needles])


def test_bad_flag_is_exit_2(cli: Any) -> None:
    assert cli("ensure").code == 2
    assert cli("ensure", "x", "--engine", "nope").code == 2


def test_json_errors_are_machine_readable(cli: Any, tmp_path: Path) -> None:
    result = cli("ensure", str(tmp_path / "nope.gguf"), "--json")
    assert result.code == 3
    assert json.loads(result.stdout)["error"]["code"] == "not_found"


def test_unreadable_file_is_exit_2(tmp_path: Path, cache_dir: Path) -> None:
    """Through the real CLI. Root reads anything, so as root the CLI runs without its DAC capabilities
    (util-linux setpriv): the same permission check an ordinary user meets."""
    model = tmp_path / "secret.gguf"
    shutil.copy(EXAMPLE_GGUF, model)
    model.chmod(0o000)
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without util-linux setpriv: cannot make a file unreadable")
        caps = "-dac_override,-dac_read_search"
        cmd = [
            setpriv,
            f"--inh-caps={caps}",
            f"--bounding-set={caps}",
            sys.executable,
            "-m",
            "model_provisioner",
            "--cache-dir",
            str(cache_dir),
            "ensure",
            str(model),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        code, stderr = proc.returncode, proc.stderr
    else:
        result = run_cli("ensure", str(model), cache_dir=cache_dir)
        code, stderr = result.code, result.stderr
    assert code == 2, stderr
    assert_one_line_error(stderr, "permission denied", str(model))


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_verify_ls_rm_round_trip(cli: Any, make_gguf: Any) -> None:
    a = make_gguf("a.gguf")
    b = make_gguf("b.gguf", seed=3)
    assert cli("ensure", str(a)).code == 0 and cli("ensure", str(b)).code == 0
    ok = cli("verify", "--all", "--json")
    assert ok.code == 0 and ok.json()["failed"] == 0
    data = bytearray(b.read_bytes())
    data[-2] ^= 1
    st = b.stat()
    b.write_bytes(bytes(data))
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    bad = cli("verify", "--all")
    assert bad.code == 4 and "FAILED" in bad.stdout and "1 of 2" in bad.stderr
    dry = cli("rm", "file:*a.gguf", "--dry-run")
    assert dry.code == 0 and "would forget" in dry.stdout  # registered in place: only forgotten
    assert len(cli("ls", "--json").json()["models"]) == 2
    assert cli("rm", "file:*").code == 0
    assert cli("ls", "--json").json()["models"] == []
    assert a.exists() and b.exists()


def test_ensure_with_handoff_dir_writes_handoff_and_provenance(cli: Any, gguf_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("ensure", str(gguf_file), "--handoff-dir", str(out), "--json")
    assert result.code == 0, result.stderr
    assert result.json()["engine"] == "llamacpp"
    handoff = json.loads((out / ".runtime" / "engines" / "llamacpp.json").read_text())
    assert handoff["model"] == {"id": f"file:{gguf_file}", "path": str(gguf_file)}
    assert handoff["metadata"]["ctx_max"] == 4096 and handoff["metadata"]["format"] == "gguf"
    lines = (out / ".runtime" / "provenance" / "models.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["model_id"] == f"file:{gguf_file}"


def test_cache_dir_from_environment(tmp_path: Path, gguf_file: Path) -> None:
    cache = tmp_path / "env-cache"
    result = run_cli("ensure", str(gguf_file), env={"MODEL_PROVISIONER_CACHE": str(cache)})
    assert result.code == 0 and (cache / "catalog.db").exists()


def test_console_scripts_are_installed() -> None:
    for name in ("model-provisioner", "mprov"):
        exe = shutil.which(name) or str(Path(sys.executable).parent / name)
        assert Path(exe).exists(), f"{name} is not installed; run pip install -e ."


def test_the_version_is_written_once_and_is_what_every_front_end_reports() -> None:
    import importlib.metadata
    import tomllib

    import model_provisioner
    from model_provisioner.core.version import VERSION

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]  # read from core/version.py
    assert model_provisioner.__version__ == VERSION
    assert importlib.metadata.version("model-provisioner") == VERSION  # what the installed metadata says
    shown = run_cli("--version")
    assert shown.code == 0 and shown.stdout.strip().endswith(VERSION), shown.stdout


def test_version_flag(cli: Any) -> None:
    from importlib.metadata import version

    result = cli("--version")
    assert result.code == 0 and version("model-provisioner") in result.stdout


def test_xdg_cache_home_local_dir_and_max_workers(tmp_path: Path, make_gguf: Any) -> None:
    """Issue 26 item 15: the cache follows XDG_CACHE_HOME (an absolute one, as the spec says); --local-dir lays
    the verified files out as `hf download --local-dir` does; --max-workers is bounded."""
    model = make_gguf("m.gguf")
    xdg = tmp_path / "xdg"
    env = {"XDG_CACHE_HOME": str(xdg)}
    clean = {k: v for k, v in os.environ.items() if k != "MODEL_PROVISIONER_CACHE"}
    done = subprocess.run(
        [sys.executable, "-m", "model_provisioner", "ensure", str(model), "--local-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (xdg / "models" / "catalog.db").exists()
    laid = tmp_path / "out" / "m.gguf"
    assert laid.read_bytes() == model.read_bytes() and "1 file(s) in" in done.stderr
    relative = subprocess.run(
        [sys.executable, "-m", "model_provisioner", "ls", "--json"],
        capture_output=True,
        text=True,
        env={**clean, "XDG_CACHE_HOME": "relative/dir", "HOME": str(tmp_path / "home")},
        timeout=60,
        cwd=tmp_path,
    )
    assert relative.returncode == 0 and not (tmp_path / "relative").exists()  # ignored, as the spec says
    bad = run_cli("ensure", str(model), "--max-workers", "0", cache_dir=tmp_path / "c")
    assert bad.code == 2 and "--max-workers 0" in bad.stderr


def test_local_dir_links_cost_the_cache_no_rehash(cli: Any, fileserver: Any, make_gguf: Any, tmp_path: Path) -> None:
    """A hard link into --local-dir changes the blob's ctime; the cache keeps trusting what it verified."""
    url = fileserver.put("linked/m.gguf", make_gguf("linked.gguf").read_bytes())
    first = cli("ensure", url, "--local-dir", str(tmp_path / "out"))
    assert first.code == 0, first.stderr
    again = cli("ensure", url, "--json")
    assert again.code == 0 and again.json()["from_cache"], again.stderr
    assert len(cli("inspect", "--json", url).json()["verifications"]) == 1, "re-hashed after its own hard link"
