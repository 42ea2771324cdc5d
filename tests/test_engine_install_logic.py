"""The pure parts of installing and running an engine, fast: reading a package index page, cmake's progress
and its estimate, one streamed chat event, the settings, what a source archive is recorded as, and the
question ``up`` asks in a terminal when no engine is installed."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from model_provisioner.cli.run_command import _delta
from model_provisioner.engines.build import BuildProgress, _Reporter
from model_provisioner.engines.package_index import _files

from .conftest import ROOT, run_cli
from .helpers import serve_page


def test_index_pages_name_their_files_in_json_and_html() -> None:
    body = b'{"meta": {"api-version": "1.0"}, "files": [{"filename": "a-1.tar.gz", "url": "../../p/a-1.tar.gz"}]}'
    assert _files(body, "application/vnd.pypi.simple.v1+json", "https://idx/simple/a/") == [
        ("a-1.tar.gz", "https://idx/p/a-1.tar.gz")
    ]
    page = b'<a href="https://files/x/a-1.tar.gz#sha256=ab" data-requires-python="&gt;=3.8">a-1.tar.gz</a>\n'
    page += b"<A HREF='/rel/a&amp;b.whl'>a&amp;b.whl</A>"
    assert _files(page, "text/html", "https://idx/simple/a/") == [
        ("a-1.tar.gz", "https://files/x/a-1.tar.gz"),
        ("a&b.whl", "https://idx/rel/a&b.whl"),
    ]
    assert _files(b"{not json", "application/vnd.pypi.simple.v1+json", "https://idx/") == []


def test_cmake_progress_gives_an_estimate_from_this_runs_own_rate() -> None:
    seen: list[BuildProgress] = []
    reporter = _Reporter(seen.append, started=0.0, log_path="/log", resumed=True)
    reporter.step("configure")
    reporter.line(b"[ 50%] ignored while configuring\n")
    reporter.step("compile")
    for line in (b"[ 60%] Building CXX object a.o\n", b"[ 60%] Building CXX object b.o\n", b"-- no percent\n"):
        reporter.line(line)
    reporter.line(b"[ 80%] Linking CXX executable llama-server\n")
    assert [(p.step, p.percent) for p in seen] == [
        ("configure", None),
        ("compile", None),
        ("compile", 60),
        ("compile", 80),
    ]
    assert seen[2].eta_s is None  # one point is no rate
    last = seen[3]
    assert last.eta_s is not None and last.eta_s >= 0 and last.resumed and last.log_path == "/log"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('data: {"choices":[{"delta":{"content":"Hi"}}]}', "Hi"),
        ('data: {"choices":[{"delta":{"role":"assistant"}}]}', ""),
        ("data: [DONE]", None),
        (": keep-alive", ""),
        ("data: {broken", ""),
        ('data: {"choices":[]}', ""),
        ('data: {"choices":[{"delta":{"content":7}}]}', ""),
    ],
)
def test_one_streamed_chat_event(line: str, expected: str | None) -> None:
    assert _delta(line) == expected


def test_auto_install_takes_three_values_named_in_the_error(tmp_path: Path, settings_file: Any) -> None:
    path = settings_file(engines={"auto_install": "sometimes"})
    bad = run_cli("engines", "installed", cache_dir=tmp_path / "c", env={"MODEL_PROVISIONER_SETTINGS": str(path)})
    assert bad.code == 2 and "engines.auto_install" in bad.stderr and "ask, always, never" in bad.stderr


def test_a_source_archive_is_recorded_as_an_archive_not_warned_about_as_a_model(tmp_path: Path) -> None:
    archive = tmp_path / "src-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("src-1.0/CMakeLists.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"x\n\n"))
    done = run_cli("ensure", str(archive), "--json", cache_dir=tmp_path / "c")
    assert done.code == 0 and '"format": "archive"' in done.stdout, done.stdout
    assert "no model format recognised" not in done.stderr


def test_up_in_a_terminal_with_no_engine_asks_once_and_a_no_is_exit_2(tmp_path: Path) -> None:
    """``engines.auto_install: ask`` (the default) asks in a terminal; "n" leaves nothing behind."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "PATH": str(tmp_path)}  # no llama-server anywhere
    cmd = [sys.executable, "-m", "model_provisioner", "--cache-dir", str(tmp_path / "c"), "up"]
    proc = subprocess.Popen(
        [*cmd, str(ROOT / "examples" / "tiny-runnable-llama.gguf")],
        stdin=secondary,
        stdout=subprocess.PIPE,
        stderr=secondary,
        env=env,
    )
    os.close(secondary)
    said = b""
    while b"[y/N]" not in said:
        ready, _, _ = select.select([primary], [], [], 60)
        assert ready, f"no question within 60 s: {said!r}"
        said += os.read(primary, 4096)
    assert b"Build it now from the pinned, verified llama.cpp sources" in said
    os.write(primary, b"n\n")
    assert proc.wait(60) == 2
    rest = b""
    while select.select([primary], [], [], 0.5)[0]:
        try:
            chunk = os.read(primary, 4096)
        except OSError:
            break
        if not chunk:
            break
        rest += chunk
    os.close(primary)
    assert b"engines install llamacpp" in rest, rest
    listed = run_cli("engines", "--json", cache_dir=tmp_path / "c")
    assert '"engines": []' in listed.stdout


def test_a_planted_engine_row_never_becomes_a_path(tmp_path: Path) -> None:
    """A catalog row naming ``../..`` (a shared cache's catalog is writable by the group) is skipped: never
    listed, never run, never removed by ``uninstall``."""
    from model_provisioner.storage.catalog import EngineRecord, SqliteCatalog

    cache = tmp_path / "c"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine")
    assert run_cli("ls", cache_dir=cache).code == 0  # makes the catalog
    catalog = SqliteCatalog(cache / "catalog.db")
    row = dict(
        target="llama-server",
        binary_sha256="0" * 64,
        size_bytes=1,
        version="1",
        source="x",
        source_digest="sha256:" + "0" * 64,
        subdir="",
        flags=(),
        origin="built",
        build_seconds=None,
        installed_ms=1,
    )
    catalog.put_engine(EngineRecord(kind="llamacpp", key="../../../victim", **row))  # type: ignore[arg-type]
    catalog.close()
    listed = run_cli("engines", "installed", "--json", cache_dir=cache)
    assert listed.code == 0 and '"engines": []' in listed.stdout
    shown = run_cli("engines", "installed", cache_dir=cache)
    assert shown.code == 0 and "not one we write" in shown.stderr and "victim" not in shown.stdout
    removed = run_cli("engines", "uninstall", "llamacpp", cache_dir=cache)
    assert removed.code == 3 and (victim / "keep").read_text() == "mine"


def test_an_index_pointing_the_sources_at_a_local_file_is_refused(
    fileserver: Any, settings_file: Any, tmp_path: Path
) -> None:
    from model_provisioner.engines.package_index import LLAMACPP_SDIST

    page = f'<a href="file:///etc/hostname">{LLAMACPP_SDIST.filename}</a>'.encode()

    serve_page(fileserver, "/simple/", page)
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file(engines={"package_index": f"{fileserver.url}/simple"}))}
    refused = run_cli("engines", "install", "llamacpp", cache_dir=tmp_path / "c", env=env)
    assert refused.code == 2 and "only http(s) URLs" in refused.stderr, refused.stderr
    assert not list((tmp_path / "c").glob("engines/llamacpp/*"))


def test_run_with_nothing_to_ask_says_so_before_anything_starts(tmp_path: Path) -> None:
    example = str(ROOT / "examples" / "tiny-runnable-llama.gguf")
    for asked in ({"args": ("   ",)}, {"args": (), "input": ""}):
        done = run_cli("run", example, *asked["args"], cache_dir=tmp_path / "c", input=asked.get("input"))
        assert done.code == 2 and "nothing to ask" in done.stderr, done.stderr
    assert not (tmp_path / "c" / "run").exists()
