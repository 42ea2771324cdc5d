"""Engine trust (docs/reliability.md, "The engine half"): what an API caller, a co-tenant of a shared cache or
a model changed behind our back can do to a running engine, its restarts, its files and its API. Against the
real llama-server built from the vendored llama.cpp tree and the HTTP API as a real server process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import alive, run_cli
from .helpers import wait_for

API_TOKEN_ENV = "MODEL_PROVISIONER_API_TOKEN"


def processes_with(text: str) -> list[int]:
    """The engines whose command line contains ``text`` (a per-test model path: that test's engines)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if (
                argv[0].endswith((b"llama-server", b"tritonserver"))
                and text.encode() in b" ".join(argv)
                and alive(int(pid))
            ):
                found.append(int(pid))
        except OSError:
            continue
    return found


def spawn_up(cache_dir: Path, model: Path, binary: str, pool: str, *extra: str, env: dict[str, str]) -> Any:
    """``up`` of ``model`` as its own process (a test pauses it at failpoints, signals it, reads its output)."""
    cmd = [sys.executable, "-m", "model_provisioner", "--cache-dir", str(cache_dir), "up", str(model)]
    return subprocess.Popen(
        [*cmd, "--binary", binary, "--pool", pool, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def pool_json(cache_dir: Path, pool: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((cache_dir / "run" / f"{pool}.json").read_text())
    return state


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    """This test's own copy of the runnable model (its path identifies this test's engines)."""
    (tmp_path / "models").mkdir(exist_ok=True)
    return Path(shutil.copy(tiny_model, tmp_path / "models" / "served.gguf"))


# ------------------------------------------------------------------------------ 1, 2, 12: the API's requests
def onnx_repository(root: Path) -> Path:
    """A Triton repository whose one model loads weights only (no code): it passes every check up to the exec."""
    repo = root / "model_repository"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text('name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n')
    (repo / "m" / "1" / "model.onnx").write_bytes(b"not really onnx, never loaded by /bin/false")
    return repo


def test_api_engine_field_is_validated_before_anything_starts(
    api_factory: Any, tmp_path: Path, cache_dir: Path
) -> None:
    repo = onnx_repository(tmp_path / "repos")
    handoffs = tmp_path / "handoffs"
    api = api_factory(
        settings={
            "api_file_roots": [str(tmp_path / "repos")],
            "api_handoff_dir": str(handoffs),
            "engines": {"triton": {"binary": "/bin/false"}},
        }
    )
    # before: any engine other than llamacpp took the Triton branch, and the engine's log was appended to
    # <cache>/run/../../victim/pwned-default.log (parents created)
    for engine in ("../../victim/pwned", "LLAMACPP", "", "triton/../triton"):
        answer = api.client.post("/v1/engines", json={"ref": f"file:{repo}", "engine": engine}, timeout=60)
        assert answer.status_code == 400 and "engine" in answer.text, (engine, answer.text)
    for pool in ("../x", "a/b", ".hidden", "x" * 65):
        answer = api.client.post(
            "/v1/engines", json={"ref": f"file:{repo}", "engine": "triton", "pool": pool}, timeout=60
        )
        assert answer.status_code == 400, (pool, answer.text)
    assert not (tmp_path / "victim").exists() and not handoffs.exists()
    assert not (cache_dir / "run").exists() or list((cache_dir / "run").glob("*.json")) == []
    assert api.client.get("/v1/engines").json()["engines"] == []


def test_api_refuses_a_triton_repository_that_runs_code(api_factory: Any, tmp_path: Path) -> None:
    repo = tmp_path / "repos" / "model_repository"
    (repo / "add" / "1").mkdir(parents=True)
    (repo / "add" / "config.pbtxt").write_text('name: "add"\nbackend: "python"\nmax_batch_size: 0\n')
    (repo / "add" / "1" / "model.py").write_text("import os\nos.system('touch /tmp/pwned-by-model')\n")
    api = api_factory(
        settings={
            "api_file_roots": [str(tmp_path / "repos")],
            "allow_remote_code": True,
            "engines": {"triton": {"binary": "/bin/false"}},
        }
    )
    answer = api.client.post("/v1/engines", json={"ref": f"file:{repo}", "engine": "triton"}, timeout=60)
    assert answer.status_code == 403, answer.text
    message = answer.json()["error"]["message"]
    assert "add (backend python)" in message and "api_allow_remote_code" in message, message
    assert api.client.get("/v1/engines").json()["engines"] == []


def test_api_engine_requests_are_bounded(api_factory: Any, llama_server: str, model_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "supervisor-paused"
    api = api_factory(
        settings={
            "api_file_roots": [str(model_copy.parent)],
            "api_max_sync_fetches": 1,
            "engines": {
                "max_pools": 1,
                "llamacpp": {"binary": llama_server, "max_ctx_size": 2048, "max_threads": 2, "max_parallel": 4},
            },
        },
        env={"MODEL_PROVISIONER_FAILPOINTS": f"supervisor.recorded=pause:{marker}"},
    )
    c = api.client
    ref = f"file:{model_copy}"
    for flags, setting in (
        (["--ctx-size", "2000000"], "max_ctx_size"),
        (["--threads", "300"], "max_threads"),
        (["-c=4096"], "max_ctx_size"),
        (["--parallel", "64"], "max_parallel"),
        (["--threads-batch", "3"], "max_threads"),
    ):
        answer = c.post("/v1/engines", json={"ref": ref, "flags": flags}, timeout=60)
        assert answer.status_code == 403 and setting in answer.json()["error"]["message"], (flags, answer.text)
    assert c.post("/v1/engines", json={"ref": ref, "flags": ["--threads", "x"]}, timeout=60).status_code == 400
    assert c.post("/v1/engines", json={"ref": ref, "flags": ["--threads"] * 65}, timeout=60).status_code == 400
    # a start holds a worker until its engine is ready: a second one past api_max_sync_fetches is 503 at once
    with httpx.Client(base_url=api.url, headers=c.headers, timeout=120) as other:
        import threading

        first: list[httpx.Response] = []
        starter = threading.Thread(
            target=lambda: first.append(
                other.post("/v1/engines", json={"ref": ref, "pool": "a", "flags": ["--threads", "1"]})
            )
        )
        starter.start()
        wait_for(marker.exists, what="the first start to reach its supervisor")
        busy = c.post("/v1/engines", json={"ref": ref, "pool": "b"}, timeout=60)
        assert busy.status_code == 503 and "api_max_sync_fetches" in busy.text, busy.text
        marker.unlink()
        starter.join(timeout=120)
    assert first and first[0].status_code == 201, first[0].text if first else "no answer"
    # one pool at most (engines.max_pools): the second is refused naming the setting, nothing of it runs
    refused = c.post("/v1/engines", json={"ref": ref, "pool": "b"}, timeout=60)
    assert refused.status_code == 403 and "engines.max_pools" in refused.text, refused.text
    assert [e["pool_id"] for e in c.get("/v1/engines").json()["engines"]] == ["a"]
    assert len(processes_with(str(model_copy))) == 1
    assert c.delete("/v1/engines/a", timeout=30).status_code == 200


# ------------------------------------------------------------------------------ 5, 6: what restarts serve
def test_a_model_changed_in_place_is_never_served_after_a_restart(
    engines: Any, llama_server: str, model_copy: Path, cache_dir: Path
) -> None:
    started = engines("up", str(model_copy), "--binary", llama_server, "--json")
    assert started.code == 0, started.stderr
    pool = json.loads(started.stdout)
    with open(model_copy, "r+b") as fh:  # one byte of tensor data, edited in place (same inode, same size)
        fh.seek(-100, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-100, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.kill(pool["pid"], signal.SIGKILL)
    failed = wait_for(
        lambda: (s := pool_json(cache_dir, "default"))["state"] in ("failed", "crashed") and s,
        what="the supervisor to notice the change",
    )
    assert failed["state"] == "failed" and failed["error_code"] == "model_changed", failed
    assert pool["digest"] in failed["error"] and "changed" in failed["error"], failed["error"]
    assert processes_with(str(model_copy)) == []  # the changed bytes were never served
    listed = json.loads(engines("engines", "--json").stdout)["engines"]
    assert [(e["pool_id"], e["state"]) for e in listed] == [("default", "failed")]


def test_a_file_ref_swapped_for_a_symlink_out_of_the_api_roots_is_not_reopened(
    api_factory: Any, llama_server: str, model_copy: Path, tmp_path: Path, cache_dir: Path
) -> None:
    api = api_factory(
        settings={"api_file_roots": [str(model_copy.parent)], "engines": {"llamacpp": {"binary": llama_server}}}
    )
    made = api.client.post("/v1/engines", json={"ref": f"file:{model_copy}", "pool": "roots"}, timeout=120)
    assert made.status_code == 201, made.text
    outside = tmp_path / "outside.gguf"
    shutil.copy(model_copy, outside)  # the very same bytes, but outside the roots
    model_copy.unlink()
    model_copy.symlink_to(outside)
    os.kill(made.json()["pid"], signal.SIGKILL)
    failed = wait_for(
        lambda: (s := pool_json(cache_dir, "roots"))["state"] in ("failed", "crashed") and s,
        what="the supervisor to refuse the swapped file",
    )
    assert failed["state"] == "failed" and "without symbolic links" in failed["error"], failed
    assert processes_with(str(model_copy)) == [] and processes_with(str(outside)) == []


# ------------------------------------------------------------------------------ 7: one operation per pool
def test_concurrent_ups_of_one_pool_start_one_engine(
    engines: Any, llama_server: str, model_copy: Path, cache_dir: Path
) -> None:
    cmd = [
        sys.executable,
        "-m",
        "model_provisioner",
        "--cache-dir",
        str(cache_dir),
        "up",
        str(model_copy),
        "--binary",
        llama_server,
        "--pool",
        "same",
    ]
    racers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in racers]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2, 2], results
    assert all("already runs" in err for code, err in results if code == 2), results
    assert len(processes_with(str(model_copy))) == 1
    assert engines("down", "--pool", "same").code == 0
    assert processes_with(str(model_copy)) == []


@pytest.mark.parametrize("how", ["down", "sigint", "sigterm"])
def test_nothing_of_a_pool_runs_once_down_returns_or_up_is_interrupted(
    how: str, engines: Any, llama_server: str, model_copy: Path, cache_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "supervisor-paused"
    env = {**os.environ, "MODEL_PROVISIONER_FAILPOINTS": f"supervisor.recorded=pause:{marker}"}
    up = spawn_up(cache_dir, model_copy, llama_server, "p", env=env)
    wait_for(marker.exists, what="the supervisor to record itself")
    supervisor = pool_json(cache_dir, "p")["supervisor_pid"]
    if how == "down":
        down = subprocess.Popen(
            [sys.executable, "-m", "model_provisioner", "--cache-dir", str(cache_dir), "down", "--pool", "p"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        marker.unlink(missing_ok=True)  # before or after down's SIGTERM: either way nothing may stay running
        assert down.wait(timeout=60) == 0, down.stderr.read() if down.stderr else ""
        # up either saw the stop (exit 9, "stopped") or became ready just before it; never a pool left running
        code, err = up.wait(timeout=60), up.stderr.read() if up.stderr else ""
        assert code == 0 or (code == 9 and "stopped" in err), (code, err)
    else:
        up.send_signal(signal.SIGINT if how == "sigint" else signal.SIGTERM)
        marker.unlink(missing_ok=True)
        code, err = up.wait(timeout=60), up.stderr.read() if up.stderr else ""
        assert code == (130 if how == "sigint" else 143), (code, err)  # what up said, should it ever end otherwise
    assert supervisor and not alive(supervisor)
    # down leaves the pool listed as stopped (until its next up); an up that failed or was interrupted leaves
    # no pool behind (docs/engines.md, "Pools")
    state = cache_dir / "run" / "p.json"
    if how == "down":
        assert not state.exists() or pool_json(cache_dir, "p")["state"] == "stopped"
    else:
        assert not state.exists()
    assert processes_with(str(model_copy)) == []
    # and the pool can be started again at once
    again = engines("up", str(model_copy), "--binary", llama_server, "--pool", "p", "--json")
    assert again.code == 0, again.stderr


def test_up_interrupted_before_it_knows_its_supervisors_pid_leaves_nothing_running(
    engines: Any, llama_server: str, model_copy: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """Ctrl-C in the instant after the supervisor got its state and before ``up`` recorded its pid (the
    supervisor had recorded itself, ``up`` had not, and cleanup left it running): cleanup stops the supervisor
    that recorded itself under this ``up``'s run token and is proven the pool's."""
    up_paused, supervisor_paused = tmp_path / "up-paused", tmp_path / "supervisor-paused"
    failpoints = f"up.supervisor_started=pause:{up_paused},supervisor.recorded=pause:{supervisor_paused}"
    up = spawn_up(
        cache_dir, model_copy, llama_server, "p", env={**os.environ, "MODEL_PROVISIONER_FAILPOINTS": failpoints}
    )
    wait_for(lambda: up_paused.exists() and supervisor_paused.exists(), what="both paused")
    supervisor = pool_json(cache_dir, "p")["supervisor_pid"]
    assert supervisor and alive(supervisor)
    up.send_signal(signal.SIGINT)  # up is in its pause: it has no record of the supervisor's pid
    assert up.wait(timeout=60) == 130, up.stderr.read() if up.stderr else ""
    supervisor_paused.unlink(missing_ok=True)
    wait_for(lambda: not alive(supervisor), 30, "the supervisor to stop")
    assert not (cache_dir / "run" / "p.json").exists(), "an interrupted up leaves no pool behind"
    assert processes_with(str(model_copy)) == []


# ------------------------------------------------------------------------------ 9, 10: the run directory
def test_engine_logs_never_follow_planted_links_and_never_collide(
    engines: Any, llama_server: str, model_copy: Path, cache_dir: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (cache_dir / "run").mkdir(parents=True)
    for planted in ("p.engine.log", "q.supervisor.log"):
        link = cache_dir / "run" / planted
        link.symlink_to(victim)
        refused = engines("up", str(model_copy), "--binary", llama_server, "--pool", planted.split(".")[0])
        assert refused.code == 4 and "symbolic link" in refused.stderr, refused.stderr
        link.unlink()
    assert victim.read_text() == "precious\n"
    assert processes_with(str(model_copy)) == []
    # pool ``q.supervisor`` and pool ``q``: every file of one is distinct from every file of the other
    for pool in ("q.supervisor", "q"):
        assert engines("up", str(model_copy), "--binary", llama_server, "--pool", pool, "--json").code == 0
    names = {p.name for p in (cache_dir / "run").iterdir()}
    assert {"q.engine.log", "q.supervisor.log", "q.supervisor.engine.log", "q.supervisor.supervisor.log"} <= names
    assert (cache_dir / "run" / "q.engine.log").read_text().count("listening on http") == 1
    assert (cache_dir / "run" / "q.supervisor.engine.log").read_text().count("listening on http") == 1


def test_down_signals_only_processes_proven_ours(
    engines: Any, llama_server: str, model_copy: Path, cache_dir: Path
) -> None:
    real = engines("up", str(model_copy), "--binary", llama_server, "--pool", "real", "--json")
    assert real.code == 0, real.stderr
    victim = subprocess.Popen(["sleep", "300"])
    try:
        from model_provisioner.core.processes import start_time

        planted = {
            **pool_json(cache_dir, "real"),
            "pool_id": "planted",
            "pid": victim.pid,
            "pid_start": start_time(victim.pid),
            "supervisor_pid": victim.pid,
            "supervisor_start": start_time(victim.pid),
            "state": "ready",
        }
        (cache_dir / "run" / "planted.json").write_text(json.dumps(planted))
        (cache_dir / "run" / "linked.json").symlink_to(cache_dir / "run" / "planted.json")
        # the planted state even copies the real pool's run token: the victim's environment does not have it
        down = engines("down", "--all")
        assert down.code == 0, down.stderr
        assert victim.poll() is None, "down signalled a process that is not ours"
        assert "not a process this pool started" in down.stderr and "linked.json" in down.stderr, down.stderr
        assert processes_with(str(model_copy)) == []  # the real pool stopped all the same
        assert pool_json(cache_dir, "real")["state"] == "stopped"
    finally:
        victim.kill()
        victim.wait()


# ------------------------------------------------------------------------------ 11: secrets
def test_engine_secrets_reach_the_engine_and_nothing_else(
    engines: Any, llama_server: str, model_copy: Path, cache_dir: Path, tmp_path: Path
) -> None:
    key = "engine-api-key-7f3a9c21"
    env = {API_TOKEN_ENV: "api-token-should-not-leak-1234", "AWS_SECRET_ACCESS_KEY": "aws-secret-should-not-leak"}
    started = engines(
        "up",
        str(model_copy),
        "--binary",
        llama_server,
        "--flag=--api-key",
        f"--flag={key}",
        "--handoff-dir",
        str(tmp_path),
        "--json",
        env=env,
    )
    assert started.code == 0, started.stderr
    pool = json.loads(started.stdout)
    # the key reached the engine: it answers only with it
    assert httpx.get(f"{pool['url']}/v1/models", timeout=5).status_code == 401
    with_key = httpx.get(f"{pool['url']}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    assert with_key.status_code == 200
    assert pool["flags"][pool["flags"].index("--api-key") :][:2] == ["--api-key", "***"]
    environ = Path(f"/proc/{pool['pid']}/environ").read_bytes().split(b"\0")
    names = {item.split(b"=", 1)[0].decode() for item in environ if item}
    assert API_TOKEN_ENV not in names and "AWS_SECRET_ACCESS_KEY" not in names, names
    assert Path(f"/proc/{pool['pid']}/cmdline").read_bytes().find(key.encode()) == -1
    written = [*(cache_dir / "run").iterdir(), tmp_path / ".runtime" / "engines" / "llamacpp.json"]
    for path in written:
        assert key.encode() not in path.read_bytes(), path
    listed = engines("engines", "--json")
    assert key not in listed.stdout and key not in started.stdout + started.stderr


# ------------------------------------------------------------------------------ 4, 8, 9: source builds
TINY_MAIN = r"""
#include <cstdio>
#include <cstring>
int main(int argc, char** argv) {
    if (argc > 1 && std::strcmp(argv[1], "--version") == 0) { std::puts("version: 1 (tiny)"); return 0; }
    std::puts("MARK");
    return 3;
}
"""


def source_archive(path: Path, mark: str) -> str:
    """A tiny C++ project whose target is called llama-server (it prints ``mark`` and exits 3); its digest."""
    import hashlib
    import tarfile

    tree = path.parent / f"{path.stem}-tree" / "tiny-1"
    tree.mkdir(parents=True)
    (tree / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.13)\nproject(tiny CXX)\nadd_executable(llama-server main.cpp)\n"
    )
    (tree / "main.cpp").write_text(TINY_MAIN.replace("MARK", mark))
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tree, arcname="tiny-1")
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def engine_provisioner(cache_dir: Path, config: dict[str, Any], path: Path, **kwargs: Any) -> Any:
    path.write_text(json.dumps(config))
    code = "import sys; from model_provisioner.cli import engine_main; sys.exit(engine_main())"
    return subprocess.run(
        [sys.executable, "-c", code, "--cache-dir", str(cache_dir), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def source_config(model: Path, archive: Path, digest: str | None, pool: str = "built") -> dict[str, Any]:
    engine: dict[str, Any] = {
        "kind": "llamacpp",
        "pool": pool,
        "provisioning_mode": "source",
        "source": f"file:{archive}",
    }
    if digest:
        engine["source_digest"] = digest
    return {"model_ref": str(model), "engine": engine}


def built_home(cache_dir: Path) -> Path:
    homes = [p for p in (cache_dir / "engines" / "llamacpp").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(homes) == 1, homes
    return homes[0]


def test_a_built_engine_is_trusted_by_its_bytes_not_its_name(tiny_model: Path, tmp_path: Path, cache_dir: Path) -> None:
    archive = tmp_path / "tiny.tar.gz"
    digest = source_archive(archive, "tiny engine ran")
    config = source_config(tiny_model, archive, digest)
    first = engine_provisioner(cache_dir, config, tmp_path / "engine.json")
    assert first.returncode == 9 and "tiny engine ran" in first.stderr, first.stderr  # built, then run as is
    home = built_home(cache_dir)
    binary = home / "llama-server"
    assert oct(home.stat().st_mode & 0o777) == "0o755" and not binary.stat().st_mode & 0o222
    original = binary.read_bytes()
    marker = tmp_path / "replaced-binary-ran"
    # a co-tenant replaces the binary with their own program (same name, same directory)
    binary.chmod(0o755)
    binary.write_text(f"#!/bin/sh\ntouch {marker}\n")
    replaced = engine_provisioner(cache_dir, config, tmp_path / "engine.json")
    assert replaced.returncode == 4 and "no longer has the bytes" in replaced.stderr, replaced.stderr
    assert not marker.exists()
    # a directory others can write into is not ours alone, whatever it holds
    binary.write_bytes(original)
    home.chmod(0o775)
    shared = engine_provisioner(cache_dir, config, tmp_path / "engine.json")
    assert shared.returncode == 4 and "writable by others" in shared.stderr, shared.stderr
    # a key directory pre-created by someone else (the key is computable from a public digest)
    home.chmod(0o755)
    os.chown(home, 65534, 65534)
    planted = engine_provisioner(cache_dir, config, tmp_path / "engine.json")
    assert planted.returncode == 4 and "belongs to uid 65534" in planted.stderr, planted.stderr
    os.chown(home, os.getuid(), os.getgid())
    again = engine_provisioner(cache_dir, config, tmp_path / "engine.json")
    assert again.returncode == 9 and "tiny engine ran" in again.stderr, again.stderr  # the same bytes: trusted


def test_a_source_build_unpacks_the_bytes_it_verified(tiny_model: Path, tmp_path: Path, cache_dir: Path) -> None:
    archive = tmp_path / "tiny.tar.gz"
    digest = source_archive(archive, "verified sources")
    no_digest = engine_provisioner(cache_dir, source_config(tiny_model, archive, None), tmp_path / "engine.json")
    assert no_digest.returncode == 2 and "source_digest" in no_digest.stderr, no_digest.stderr
    marker = tmp_path / "build-locked"
    env = {**os.environ, "MODEL_PROVISIONER_FAILPOINTS": f"engine_build.locked=pause:{marker}"}
    (tmp_path / "engine.json").write_text(json.dumps(source_config(tiny_model, archive, digest)))
    code = "import sys; from model_provisioner.cli import engine_main; sys.exit(engine_main())"
    build = subprocess.Popen(
        [sys.executable, "-c", code, "--cache-dir", str(cache_dir), "--config", str(tmp_path / "engine.json")],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    wait_for(marker.exists, what="the build to take its lock")
    swapped = tmp_path / "swapped.tar.gz"
    source_archive(swapped, "SWAPPED SOURCES RAN")
    os.replace(swapped, archive)  # after verification, while the build waits for its lock
    marker.unlink()
    assert build.wait(timeout=300) == 4
    err = build.stderr.read() if build.stderr else ""
    assert "changed after it was verified" in err, err
    assert not (cache_dir / "engines" / "llamacpp").exists() or not any(
        (p / "llama-server").exists() for p in (cache_dir / "engines" / "llamacpp").iterdir()
    )


def test_the_build_log_never_follows_a_planted_link(tiny_model: Path, tmp_path: Path, cache_dir: Path) -> None:
    from model_provisioner.engines.build import SourceSpec, build_key

    archive = tmp_path / "tiny.tar.gz"
    digest = source_archive(archive, "built")
    key = build_key(digest, SourceSpec(f"file:{archive}", digest))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (cache_dir / "engines" / "llamacpp").mkdir(parents=True)
    (cache_dir / "engines" / "llamacpp" / f"{key}.build.log").symlink_to(victim)
    refused = engine_provisioner(cache_dir, source_config(tiny_model, archive, digest), tmp_path / "engine.json")
    assert refused.returncode == 4 and "symbolic link" in refused.stderr, refused.stderr
    assert victim.read_text() == "precious\n"  # before: truncated by open(..., "w")


def test_jobs_queued_behind_their_origin_are_bounded() -> None:
    """Before, jobs waiting behind ``api_jobs_per_origin`` were never evicted (10,500 kept)."""
    import threading

    from model_provisioner.core.errors import ServerBusy
    from model_provisioner.server.jobs import Job, JobRegistry

    registry = JobRegistry(2, per_origin=1, max_pending=50)
    release = threading.Event()
    try:

        def held(job: Job) -> None:
            release.wait(30)

        for i in range(50):  # one runs, 49 wait behind the origin
            registry.submit(Job(str(i), "https://slow/m"), "slow:443", held)
        with pytest.raises(ServerBusy) as refused:
            registry.submit(Job("50", "https://slow/m"), "slow:443", lambda job: None)
        assert "api_max_queued_jobs" in str(refused.value) and len(registry) == 50
    finally:
        release.set()
        registry.shutdown()


def test_rm_between_the_ensure_and_the_lease_of_up_is_harmless(
    engines: Any, llama_server: str, model_copy: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """Before, ``rm`` in that window made ``up`` fail after ~32 s with a traceback in its message."""
    marker = tmp_path / "ensured"
    env = {**os.environ, "MODEL_PROVISIONER_FAILPOINTS": f"up.ensured=pause:{marker}"}
    up = spawn_up(cache_dir, model_copy, llama_server, "w", "--json", env=env)
    wait_for(marker.exists, what="up to have ensured the model")
    removed = run_cli("rm", f"file:{model_copy}", cache_dir=cache_dir)
    assert removed.code == 0, removed.stderr
    marker.unlink()  # the failpoint pauses again after the second ensure: let that one through too
    wait_for(lambda: marker.exists() or up.poll() is not None, what="the second ensure")
    marker.unlink(missing_ok=True)
    _out, err = up.communicate(timeout=120)
    assert up.returncode == 0, err
    assert "Traceback" not in err
    refused = run_cli("rm", f"file:{model_copy}", cache_dir=cache_dir)
    assert refused.code == 5 and "engine pool w" in refused.stderr, refused.stderr  # leased while served
