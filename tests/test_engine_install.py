"""``engines install | installed | uninstall | push`` and ``run`` (docs/engines.md, "Installing an engine", "run"):
the newcomer's path from a cache with no engine to streamed tokens, a build interrupted and continued, the
default source found on a package index, and every error path (no compiler, a wrong digest, a lying index, an
engine changed in the store). Builds of llama.cpp itself take minutes: the path through a real llama-server
installs the engine the suite built, pushed to a local registry (``--from``); the build mechanics run on a
small cmake project of our own, with a gate only the test opens."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, build_test_engines, run_cli
from .helpers import digest_of_file, processes_running, serve_page, sha256_file, wait_for

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "tiny-runnable-llama.gguf"
SDIST_DIGEST = f"sha256:{build_test_engines.fetch_test_assets.SDIST_SHA256}"

FAKE_FILES = {
    "CMakeLists.txt": """cmake_minimum_required(VERSION 3.13)
project(fake CXX)
add_library(first STATIC a.cpp b.cpp)
# the gate: this step reads a FIFO only the test writes, so the test decides when the build may go on
add_custom_command(
  OUTPUT ${CMAKE_BINARY_DIR}/gen.cpp
  COMMAND cat ${GATE}
  COMMAND ${CMAKE_COMMAND} -E copy ${CMAKE_SOURCE_DIR}/gen.cpp.in ${CMAKE_BINARY_DIR}/gen.cpp
  DEPENDS first
  VERBATIM)
add_executable(llama-server main.cpp ${CMAKE_BINARY_DIR}/gen.cpp)
target_link_libraries(llama-server first)
""",
    "gen.cpp.in": "int gen() { return 2; }\n",
    "a.cpp": "int first_a() { return 5; }\n",
    "b.cpp": "int first_b() { return 0; }\n",
    "main.cpp": """#include <cstdio>
#include <cstring>
int gen();
int first_a();
int main(int argc, char** argv) {
  if (argc > 1 && !std::strcmp(argv[1], "--version")) {
    std::printf("version: %d (fake)\\n", gen() + first_a());
    return 0;
  }
  return 1;
}
""",
}


def fake_source(tmp_path: Path) -> tuple[Path, str]:
    """A source archive with one top directory, like a release tarball: (path, digest)."""
    archive = tmp_path / "fake-engine-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in FAKE_FILES.items():
            data = text.encode()
            info = tarfile.TarInfo(f"fake-engine-1.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive, digest_of_file(archive)


def install_cmd(cache_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "model_provisioner", "--cache-dir", str(cache_dir), "engines", "install", *args]


def open_gate(gate: Path, proc: subprocess.Popen[bytes]) -> int | None:
    """The write end of the gate, once the gated build step is blocked reading it (else None)."""
    assert proc.poll() is None, f"the install ended (exit {proc.returncode}) before its gated step"
    try:
        return os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return None


def said_while_running(proc: subprocess.Popen[bytes], err_path: Path, text: str) -> None:
    """Wait (bounded) until a running command has said ``text``; a command that ended first fails at once."""

    def said() -> bool:
        assert proc.poll() is None, f"ended (exit {proc.returncode}) before saying {text!r}: {err_path.read_text()}"
        return text in err_path.read_text()

    wait_for(said, 300, repr(text))


def installed(cache_dir: Path, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    listed = run_cli("engines", "installed", "--json", cache_dir=cache_dir, env=env)
    assert listed.code == 0, listed.stderr
    engines: list[dict[str, Any]] = json.loads(listed.stdout)["engines"]
    return engines


def pools(cache_dir: Path, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    listed = run_cli("engines", "--json", cache_dir=cache_dir, env=env)
    assert listed.code == 0, listed.stderr
    found: list[dict[str, Any]] = json.loads(listed.stdout)["engines"]
    return found


def test_an_interrupted_install_keeps_its_build_tree_and_the_same_command_continues_it(
    cache_dir: Path, tmp_path: Path
) -> None:
    archive, digest = fake_source(tmp_path)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    cmd = install_cmd(cache_dir, "llamacpp", "--source", f"file:{archive}", "--digest", digest, f"--flag=-DGATE={gate}")
    first_err = tmp_path / "first.err"
    with open(first_err, "w") as err:
        first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    writer = wait_for(lambda: open_gate(gate, first), 180, "the build to reach its gated step")
    objects = list(cache_dir.glob("engines/llamacpp/.*.build/build/CMakeFiles/first.dir/a.cpp.o"))
    assert len(objects) == 1, "the first library was built before the gated step"
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
    assert first.wait(60) == 130
    os.close(writer)
    said = first_err.read_text()
    assert "Ctrl-C keeps the build tree, the same command continues it" in said and ".build.log" in said, said
    assert objects[0].exists(), "the build tree is kept"
    assert installed(cache_dir) == []

    second_err = tmp_path / "second.err"
    with open(second_err, "w") as err:
        second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    os.close(wait_for(lambda: open_gate(gate, second), 180, "the resumed build to reach its gated step"))  # EOF: go on
    out, _ = second.communicate(timeout=180)
    assert second.returncode == 0, second_err.read_text()
    assert "continuing the kept build tree" in second_err.read_text()
    log = next(cache_dir.glob("engines/llamacpp/*.build.log")).read_text()
    resumed_part = log.rsplit("=== resumed", 1)[1]
    assert "first.dir/a.cpp.o" not in resumed_part and "gen.cpp" in resumed_part
    engine = installed(cache_dir)[0]
    assert out.strip() == engine["binary"].encode()
    assert engine["version"] == "7 (fake)" and engine["source_digest"] == digest and engine["origin"] == "built"
    assert list(cache_dir.glob("engines/llamacpp/.*.build")) == [], "a finished build drops its tree"
    # the same install again builds nothing
    again = run_cli(
        *install_cmd(cache_dir, "llamacpp", "--source", f"file:{archive}", "--digest", digest, f"--flag=-DGATE={gate}")[
            5:
        ],
        cache_dir=cache_dir,
        timeout=60,
    )
    assert again.code == 0 and "building" not in again.stderr, again.stderr
    # uninstall removes it from the store and the catalog
    gone = run_cli("engines", "uninstall", "llamacpp", engine["id"], cache_dir=cache_dir)
    assert gone.code == 0 and installed(cache_dir) == [] and not Path(engine["binary"]).exists()


def install_source(cache_dir: Path, archive: Path, digest: str, env: dict[str, str] | None = None) -> Any:
    """``engines install llamacpp --source`` of the test's cmake project, its gate open."""
    source = ["--source", f"file:{archive}", "--digest", digest, "--flag=-DGATE=/dev/null"]
    return run_cli("engines", "install", "llamacpp", *source, cache_dir=cache_dir, env=env)


def test_install_error_paths_build_nothing(cache_dir: Path, tmp_path: Path) -> None:
    archive, digest = fake_source(tmp_path)
    wrong = "sha256:" + "0" * 64
    bad = install_source(cache_dir, archive, wrong)
    assert bad.code == 4 and wrong in bad.stderr, bad.stderr
    assert not list(cache_dir.glob("engines/llamacpp/*")), "nothing built from an archive with another digest"
    no_digest = run_cli("engines", "install", "llamacpp", "--source", f"file:{archive}", cache_dir=cache_dir)
    assert no_digest.code == 2 and "--digest" in no_digest.stderr
    # no compiler: one line listing what to install, and nothing built
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    bare = install_source(cache_dir, archive, digest, env={"PATH": str(empty_bin)})
    lines = bare.stderr.strip().splitlines()
    assert bare.code == 2 and len(lines) == 1, bare.stderr
    assert (
        "cmake, a C++ compiler (c++ or g++), make or ninja" in lines[0] and "apt-get install cmake g++ make" in lines[0]
    )
    assert installed(cache_dir) == [] and not list(cache_dir.glob("engines/llamacpp/*[!k]"))


def test_the_default_source_is_the_pinned_sdist_found_on_the_package_index(
    fileserver: Any, llamacpp_sdist: Path, settings_file: Any, cache_dir: Path, tmp_path: Path
) -> None:
    """``engines install llamacpp`` with no source: the index's page names the file, our verified transfer
    fetches it against the sha256 pinned in the code. A lying index can only fail the install (exit 4)."""
    name = llamacpp_sdist.name
    fileserver.put(name, llamacpp_sdist.read_bytes())
    page = f'<html><body><a href="/{name}#sha256=x">{name}</a><a href="/other.tar.gz">other.tar.gz</a></body></html>'
    serve_page(fileserver, "/simple/llama-cpp-python/", page.encode())
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file(engines={"package_index": f"{fileserver.url}/simple"}))}
    err_path = tmp_path / "install.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            install_cmd(cache_dir, "llamacpp"),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            env={**os.environ, **env},
        )
    said_while_running(proc, err_path, "building llama-server")
    os.killpg(proc.pid, signal.SIGINT)  # a full build takes minutes: what matters here is what it builds from
    assert proc.wait(60) == 130
    assert fileserver.served(name) == llamacpp_sdist.stat().st_size, "fetched once, whole"
    marks = list(cache_dir.glob("engines/llamacpp/.*.build/unpacked-from"))
    assert [m.read_text() for m in marks] == [SDIST_DIGEST]
    # the same install again, offline: the pinned sources are in the catalog, the kept tree is continued
    index_reads = sum(1 for r in fileserver.requests if r.path.startswith("/simple/"))
    with open(err_path, "w") as err:
        again = subprocess.Popen(
            [*install_cmd(cache_dir, "llamacpp")[:5], "--offline", *install_cmd(cache_dir, "llamacpp")[5:]],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            env={**os.environ, **env},
        )
    said_while_running(again, err_path, "continuing the kept build tree")
    os.killpg(again.pid, signal.SIGINT)
    assert again.wait(60) == 130, err_path.read_text()
    assert sum(1 for r in fileserver.requests if r.path.startswith("/simple/")) == index_reads
    assert fileserver.served(name) == llamacpp_sdist.stat().st_size
    # a lying index: other bytes under the pinned name
    fileserver.put(name, b"not the sources" * 1000)
    other_cache = tmp_path / "other-cache"
    lied = run_cli("engines", "install", "llamacpp", cache_dir=other_cache, env=env)
    assert lied.code == 4 and SDIST_DIGEST in lied.stderr, lied.stderr
    assert not list(other_cache.glob("engines/llamacpp/*"))


@pytest.fixture(scope="module")
def pushed_engine(registry: Any, llama_server: str, llamacpp_sdist: Path) -> dict[str, Any]:
    """The team's build machine: the llama-server the suite built, installed (recorded: it builds nothing
    again) and pushed to the local registry."""
    team = build_test_engines.ENGINE_CACHE
    made = run_cli(
        "engines",
        "install",
        "llamacpp",
        "--source",
        f"file:{llamacpp_sdist}",
        "--digest",
        SDIST_DIGEST,
        "--subdir",
        build_test_engines.SOURCE_SUBDIR,
        "--json",
        cache_dir=team,
        timeout=120,
    )
    assert made.code == 0, made.stderr
    engine: dict[str, Any] = json.loads(made.stdout)
    assert engine["binary"] == llama_server
    pushed = run_cli(
        "engines",
        "push",
        "llamacpp",
        f"oci://{registry.host}/team/llama-server:b1",
        "--id",
        engine["id"],
        "--json",
        cache_dir=team,
        timeout=120,
    )
    assert pushed.code == 0, pushed.stderr
    return {**engine, "ref": json.loads(pushed.stdout)["pushed"]}


def test_a_newcomer_goes_from_an_empty_cache_to_streamed_tokens_and_nothing_runs_after(
    pushed_engine: dict[str, Any], registry: Any, cache_dir: Path, tmp_path: Path
) -> None:
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    env = {"PATH": str(empty_bin)}  # no compiler and no llama-server on this machine
    missing = run_cli("run", str(EXAMPLE), "Hi", cache_dir=cache_dir, env=env)
    # the suggested command names the cache this run used: it runs as printed
    suggested = f"`model-provisioner --cache-dir {cache_dir} engines install llamacpp`"
    assert missing.code == 2 and suggested in missing.stderr, missing.stderr
    assert pools(cache_dir, env) == [], "a failed run leaves no pool behind"

    binary_digest = f"sha256:{pushed_engine['binary_sha256']}"
    sent_before = sum(registry.blob_transfers(binary_digest))
    got = run_cli(
        "engines", "install", "llamacpp", "--from", pushed_engine["ref"], "--json", cache_dir=cache_dir, env=env
    )
    assert got.code == 0, got.stderr
    engine = json.loads(got.stdout)
    assert engine["key"] == pushed_engine["key"] and engine["version"] == pushed_engine["version"]
    assert engine["origin"] == pushed_engine["ref"] and engine["source_digest"] == SDIST_DIGEST
    assert sha256_file(Path(engine["binary"])) == pushed_engine["binary_sha256"]
    assert sum(registry.blob_transfers(binary_digest)) - sent_before == engine["size_bytes"], "fetched once, whole"

    # the README's offline run line, as printed, from the repository root
    readme = (ROOT / "README.md").read_text().split("## Run a model", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = readme.replace("\\\n", " ").splitlines()
    printed = next(line for line in lines if line.startswith("model-provisioner run examples/"))
    answer = run_cli(*shlex.split(printed)[1:], cache_dir=cache_dir, env=env, cwd=ROOT, timeout=180)
    assert answer.code == 0, answer.stderr
    assert answer.stdout.strip(), "streamed tokens on stdout"
    assert "ready at" in answer.stderr and "stopped pool" in answer.stderr and "ready at" not in answer.stdout
    assert pools(cache_dir, env) == [] and processes_running(str(cache_dir)) == [], "the engine is gone afterwards"

    # text piped to run is the prompt, as ollama reads it
    piped = run_cli("run", str(EXAMPLE), "--max-tokens", "4", cache_dir=cache_dir, env=env, input="Hello\n")
    assert piped.code == 0 and piped.stdout.strip(), piped.stderr

    # a pool already serving the same verified model is reused, and left running
    served = run_cli("up", str(EXAMPLE), "--pool", "mine", "--json", cache_dir=cache_dir, env=env)
    assert served.code == 0, served.stderr
    reused = run_cli("run", str(EXAMPLE), "Hi", "--max-tokens", "4", cache_dir=cache_dir, env=env)
    assert reused.code == 0 and "using pool mine" in reused.stderr and reused.stdout.strip(), reused.stderr
    assert [(p["pool_id"], p["state"]) for p in pools(cache_dir, env)] == [("mine", "ready")]
    assert run_cli("down", "--pool", "mine", cache_dir=cache_dir, env=env).code == 0

    # gc, even evicting every model (the pulled artifact's entry too), never takes an installed engine
    assert run_cli("gc", "--max-size", "0", cache_dir=cache_dir, env=env).code == 0
    assert [e["key"] for e in installed(cache_dir, env)] == [engine["key"]]
    assert sha256_file(Path(engine["binary"])) == pushed_engine["binary_sha256"]

    # the installed engine changed in the store: checked again before it runs, and refused
    binary = Path(engine["binary"])
    os.chmod(binary, 0o755)
    with open(binary, "ab") as out:
        out.write(b"\0")
    refused = run_cli("run", str(EXAMPLE), "Hi", cache_dir=cache_dir, env=env, timeout=60)
    assert refused.code == 4 and "no longer has the bytes" in refused.stderr, refused.stderr
    # only the pool `down` stopped is listed (until its next up); nothing of the refused run
    assert [(p["pool_id"], p["state"]) for p in pools(cache_dir, env)] == [("mine", "stopped")]
    assert processes_running(str(cache_dir)) == []


def read_until(fd: int, marker: bytes, seen: bytes = b"", timeout_s: float = 60) -> bytes:
    """What a terminal shows until ``marker`` (bounded)."""
    import select

    while marker not in seen:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        assert ready, f"{marker!r} not shown within {timeout_s} s: {seen[-500:]!r}"
        seen += os.read(fd, 4096)
    return seen


def test_run_without_a_prompt_is_a_chat_in_the_terminal_until_bye(
    llama_server: str, cache_dir: Path, tmp_path: Path
) -> None:
    import pty

    primary, secondary = pty.openpty()
    cmd = [sys.executable, "-m", "model_provisioner", "--cache-dir", str(cache_dir), "run", str(EXAMPLE)]
    chat = subprocess.Popen(
        [*cmd, "--binary", llama_server, "--max-tokens", "6", "--system", "Answer briefly."],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    try:
        shown = read_until(primary, b">>> ")
        assert b"/bye to leave" in shown
        os.write(primary, b"Hello\n")
        shown = read_until(primary, b">>> ", b"")  # the answer, then the next prompt
        assert shown.strip(b"\r\n >"), "an answer was written"
        os.write(primary, b"And again\n")
        read_until(primary, b">>> ")
        os.write(primary, b"/bye\n")
        assert chat.wait(60) == 0
    finally:
        if chat.poll() is None:
            chat.kill()
        os.close(primary)
    assert pools(cache_dir) == [] and processes_running(str(cache_dir)) == []
