"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers that read hostile bytes.

    python fuzz/fuzz_parsers.py TARGET [libFuzzer flags, e.g. -runs=20000 -max_len=4096]

TARGET: gguf (the header-only GGUF reader), manifest (OCI manifests/indexes + layer naming), pbtxt (Triton
config.pbtxt), tar (tar/gzip/zstd layer unpacking into a throwaway store), ref (model refs). Our errors
(``ProvisionerError``) are expected outcomes; anything else is a crash that libFuzzer reports and saves.
tests/test_fuzz.py runs each target for a bounded number of runs; run longer by hand (scratch files go to
./.mprov-fuzz-work; crash inputs to ./.mprov-fuzz-work/artifacts/ unless -artifact_prefix is given).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from model_provisioner.core.errors import ProvisionerError
    from model_provisioner.core.refs import parse
    from model_provisioner.formats.gguf import read_gguf
    from model_provisioner.formats.triton import parse_config
    from model_provisioner.net.registry.manifests import Manifest, parse_manifest
    from model_provisioner.sources.oci import layer_files
    from model_provisioner.storage.blobs import BlobStore
    from model_provisioner.storage.unpack import unpack_into_store

# libFuzzer leaves with os._exit (no atexit): the scratch directory lives in the working directory, which
# the test suite makes a temporary one
WORK = Path.cwd() / ".mprov-fuzz-work"
shutil.rmtree(WORK, ignore_errors=True)
WORK.mkdir()
STORE = BlobStore(WORK / "cache")


def gguf(data: bytes) -> None:
    path = WORK / "m.gguf"
    path.write_bytes(data)
    with contextlib.suppress(ProvisionerError):
        read_gguf(path)


def manifest(data: bytes) -> None:
    try:
        parsed = parse_manifest(data, "sha256:" + "0" * 64, None, "oci://r.io/x:y")
        if isinstance(parsed, Manifest):
            for path, _layer, _compression in layer_files(parsed, "oci://r.io/x:y"):
                assert not path.startswith("/") and ".." not in path.split("/"), path
    except ProvisionerError:
        pass


def pbtxt(data: bytes) -> None:
    with contextlib.suppress(ProvisionerError):
        parse_config(data.decode("utf-8", errors="replace"), "m/config.pbtxt")


def tar(data: bytes) -> None:
    if not data:
        return
    compression = ("tar", "gzip", "zstd")[data[0] % 3]
    layer = WORK / "layer"
    layer.write_bytes(data[1:])
    try:
        for path, _sha, _size in unpack_into_store(STORE, layer, compression, "fuzz"):
            assert not path.startswith("/") and ".." not in path.split("/"), path
    except ProvisionerError:
        pass


def ref(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    try:
        parsed = parse(text, cwd="/tmp")
        assert parse(parsed.id, cwd="/tmp").id == parsed.id
    except ProvisionerError:
        pass


TARGETS = {"gguf": gguf, "manifest": manifest, "pbtxt": pbtxt, "tar": tar, "ref": ref}

if __name__ == "__main__":
    target = TARGETS[sys.argv[1]]
    flags = sys.argv[2:]
    if not any(flag.startswith("-artifact_prefix=") for flag in flags):
        # a crash input goes to the scratch directory, never where the command was run (the repo root);
        # keep the ones worth replaying in tests/fuzz_crashes/
        (WORK / "artifacts").mkdir(parents=True, exist_ok=True)
        flags.append(f"-artifact_prefix={WORK / 'artifacts'}/")
    atheris.Setup([sys.argv[0], *flags], target)
    atheris.Fuzz()
