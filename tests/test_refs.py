"""Model references: every form of DESIGN §2, canonical ids, idempotence, secrets, rejection of garbage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_provisioner import FileRef, HfRef, InvalidModelRef, OciRef, S3Ref, UrlRef, parse

from .conftest import run_cli


def test_local_forms_give_one_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    forms = [
        "./m.gguf",
        "m.gguf",
        str(model),
        "~/m.gguf",
        f"file:{model}",
        "file:m.gguf",
        f"file://{model}",
        f"file://localhost{model}",
        f"local:{model}",
        f"  {model}\n",
        f"{tmp_path}/./sub/../m.gguf",
    ]
    ids = {parse(f).id for f in forms}
    assert ids == {f"file:{os.path.realpath(model)}"}


def test_symlinked_path_resolves_to_the_real_file(tmp_path: Path) -> None:
    real = tmp_path / "real.gguf"
    real.write_bytes(b"x")
    (tmp_path / "link.gguf").symlink_to(real)
    assert parse(str(tmp_path / "link.gguf")).id == f"file:{real}"


@pytest.mark.parametrize(
    ("text", "expected_id", "kind"),
    [
        ("hf:org/repo/model.gguf", "hf:org/repo/model.gguf", HfRef),
        ("hf://org/repo/sub/dir/model.gguf", "hf:org/repo/sub/dir/model.gguf", HfRef),
        ("hf:org/repo@main/model.gguf", "hf:org/repo/model.gguf", HfRef),
        ("hf:org/repo@v1.0/model.gguf", "hf:org/repo@v1.0/model.gguf", HfRef),
        ("hf:org/repo@refs%2Fpr%2F1/m.gguf", "hf:org/repo@refs%2Fpr%2F1/m.gguf", HfRef),
        ("hf:org/repo", "hf:org/repo", HfRef),
        ("hf:org/repo/", "hf:org/repo", HfRef),
        ("hf:Org/Repo-GGUF:q4_k_m", "hf:Org/Repo-GGUF:Q4_K_M", HfRef),
        ("hf:org/repo@abc123:Q8_0", "hf:org/repo@abc123:Q8_0", HfRef),
        ("https://Example.COM:443/models/m.gguf", "https://example.com/models/m.gguf", UrlRef),
        ("https://example.com:8443/m.gguf", "https://example.com:8443/m.gguf", UrlRef),
        ("http://127.0.0.1:8080/m.gguf", "http://127.0.0.1:8080/m.gguf", UrlRef),
        ("https://[::1]:9000/m.gguf", "https://[::1]:9000/m.gguf", UrlRef),
        ("s3://bucket/key/model.gguf", "s3://bucket/key/model.gguf", S3Ref),
        ("s3://bucket/triton/", "s3://bucket/triton/", S3Ref),
        ("oci://ghcr.io/org/model:v1", "oci://ghcr.io/org/model:v1", OciRef),
        ("oci://localhost:5000/org/model", "oci://localhost:5000/org/model:latest", OciRef),
        ("oci://REGISTRY.io/org/m@sha256:" + "a" * 64, "oci://registry.io/org/m@sha256:" + "a" * 64, OciRef),
        ("oci://r.io/m:t@sha256:" + "b" * 64, "oci://r.io/m:t@sha256:" + "b" * 64, OciRef),
    ],
)
def test_remote_forms_and_canonical_ids(text: str, expected_id: str, kind: type) -> None:
    ref = parse(text)
    assert isinstance(ref, kind)
    assert ref.id == expected_id
    assert parse(ref.id).id == ref.id
    assert parse(ref.id) == ref


def test_url_secrets_never_enter_the_id_or_repr() -> None:
    ref = parse("https://user:s3cret@cdn.example.com/m.gguf?X-Amz-Signature=abcdef&X-Amz-Credential=AKIA")
    assert isinstance(ref, UrlRef)
    assert ref.id == "https://cdn.example.com/m.gguf"
    for text in (ref.id, repr(ref), str(ref)):
        assert "s3cret" not in text and "Signature" not in text and "abcdef" not in text
    assert ref.fetch_url.endswith("?X-Amz-Signature=abcdef&X-Amz-Credential=AKIA")
    assert ref == parse("https://cdn.example.com/m.gguf")


def test_error_quotes_the_input_and_says_what_is_wrong() -> None:
    with pytest.raises(InvalidModelRef) as info:
        parse("hf:org")
    assert "'hf:org'" in str(info.value) and "ORG/REPO" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidModelRef, match="unsupported scheme 'ftp'"):
        parse("ftp://host/m.gguf")


def test_error_never_echoes_a_secret() -> None:
    with pytest.raises(InvalidModelRef) as info:
        parse("https://user:hunter2@cdn.example.com/dir/?sig=topsecret")
    assert "hunter2" not in str(info.value) and "topsecret" not in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "hf:",
        "hf:org",
        "hf:org/",
        "hf:/repo",
        "hf:org/repo/../x.gguf",
        "hf:org/repo/a//b",
        "hf:org/re po",
        "hf:-org/repo",
        "hf:org/repo@/x",
        "hf:org/repo@../x/m.gguf",
        "hf:org/repo:",
        "hf:org/repo:Q4/file.gguf",
        "hf:org/repo?x=1",
        "hf:a--b/repo",
        "https://",
        "https:///m.gguf",
        "https://host/",
        "https://host/a/../m.gguf",
        "https://host:99999/m.gguf",
        "s3:bucket/key",
        "s3://B/key",
        "s3://bucket/a/../b",
        "s3://key:secret@bucket/k",
        "s3://bucket/k?versionId=1",
        "oci://repo:tag",
        "oci://ghcr.io/",
        "oci://ghcr.io/Org/Model",
        "oci://ghcr.io/org/m:",
        "oci://ghcr.io/org/m@sha256:abc",
        "oci://user:pw@ghcr.io/org/m",
        "ftp://x/y",
        "file://otherhost/x",
        "file:",
        "mailto:x",
        "a\x00b",
    ],
)
def test_garbage_is_refused_with_invalid_model_ref(text: str) -> None:
    with pytest.raises(InvalidModelRef):
        parse(text)


def test_refs_are_frozen_and_validate_themselves() -> None:
    ref = parse("hf:org/repo/m.gguf")
    with pytest.raises(AttributeError):
        ref.repo_id = "x/y"  # type: ignore[attr-defined]
    with pytest.raises(InvalidModelRef):
        HfRef("not-a-repo-id")
    with pytest.raises(InvalidModelRef):
        FileRef("relative/path")
    with pytest.raises(InvalidModelRef):
        S3Ref("bucket", "../escape")
    with pytest.raises(InvalidModelRef):
        OciRef("ghcr.io", "UPPER")


# ------------------------------------------------------------------------------------ properties
_name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_]{0,10}[A-Za-z0-9]", fullmatch=True)
_segment = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}", fullmatch=True).filter(lambda s: s not in (".", ".."))
_rev = st.one_of(
    st.none(),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,15}", fullmatch=True).filter(lambda r: ".." not in r),
    st.from_regex(r"[0-9a-f]{40}", fullmatch=True),
)


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
@settings(max_examples=300, deadline=None)
@given(
    org=_name,
    name=_name,
    rev=_rev,
    path=st.lists(_segment, min_size=0, max_size=3),
    quant=st.one_of(st.none(), st.sampled_from(["q4_k_m", "Q8_0", "iq2_xxs", "F16"])),
)
def test_hf_round_trip(org: str, name: str, rev: str | None, path: list[str], quant: str | None) -> None:
    text = f"hf:{org}/{name}" + (f"@{rev}" if rev else "")
    text += f":{quant}" if quant and not path else ("/" + "/".join(path) if path else "")
    ref = parse(text)
    assert parse(ref.id).id == ref.id
    assert parse(ref.id) == ref
    assert isinstance(ref, HfRef) and ref.repo_id == f"{org}/{name}"


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
@settings(max_examples=200, deadline=None)
@given(
    host=st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5}){1,2}", fullmatch=True),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    path=st.lists(_segment, min_size=1, max_size=4),
    query=st.text(alphabet="abcdefXYZ=&%0123456789", max_size=30),
)
def test_url_round_trip_and_query_never_in_id(host: str, port: int | None, path: list[str], query: str) -> None:
    text = f"https://{host}" + (f":{port}" if port else "") + "/" + "/".join(path) + (f"?{query}" if query else "")
    ref = parse(text)
    assert parse(ref.id).id == ref.id
    assert "?" not in ref.id and (not query or query not in ref.id.split("/", 3)[-1] or query in "/".join(path))


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
@settings(max_examples=200, deadline=None)
@given(
    registry=st.from_regex(r"[a-z][a-z0-9]{0,8}\.(io|com)(:[1-9][0-9]{1,3})?", fullmatch=True),
    repo=st.lists(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), min_size=1, max_size=3),
    tag=st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,10}", fullmatch=True)),
    digest=st.one_of(st.none(), st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
)
def test_oci_round_trip(registry: str, repo: list[str], tag: str | None, digest: str | None) -> None:
    text = f"oci://{registry}/{'/'.join(repo)}" + (f":{tag}" if tag else "") + (f"@sha256:{digest}" if digest else "")
    ref = parse(text)
    assert parse(ref.id) == ref and parse(ref.id).id == ref.id


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_parses_or_raises_invalid_model_ref(text: str) -> None:
    try:
        ref = parse(text)
    except InvalidModelRef as exc:
        assert str(exc).startswith("invalid model reference")
        return
    assert parse(ref.id).id == ref.id


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["hf:", "hf://", "s3://", "oci://", "https://", "file:", "local:"]), st.text(max_size=60))
def test_scheme_prefixed_garbage_never_crashes(prefix: str, body: str) -> None:
    try:
        ref = parse(prefix + body)
    except InvalidModelRef:
        return
    assert parse(ref.id).id == ref.id


def test_a_local_path_ending_in_a_space_round_trips() -> None:
    """Found by the coverage-guided fuzzer (input ``h\\xc6oci:: //``): the id of such a path was re-parsed
    with its trailing space stripped."""
    ref = parse("h\ufffdoci:: //", cwd="/tmp")
    assert ref.id == "file:/tmp/h\ufffdoci:: " and parse(ref.id, cwd="/tmp").id == ref.id


# ----------------------------------------------- 14. odd and hostile input: exit 2 or 4, never 1 or Pending
def test_odd_hosts_are_invalid_refs(cache_dir: Path) -> None:
    for host in ("0177.0.0.1", "256.1.1.1", "a..b", "x" * 300 + ".example", ".lead.example", "127.1", "2130706433"):
        result = run_cli("ensure", f"https://{host}/m.gguf", cache_dir=cache_dir)
        assert result.code == 2 and "host" in result.stderr, (host, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("hf.co/TheOrg/Tiny-GGUF:Q4_K_M", "hf:TheOrg/Tiny-GGUF:Q4_K_M"),
        ("hf.co/TheOrg/Tiny-GGUF:q4_k_m", "hf:TheOrg/Tiny-GGUF:Q4_K_M"),
        ("HF.co/org/repo", "hf:org/repo"),
        ("huggingface.co/org/repo/sub/m.gguf", "hf:org/repo/sub/m.gguf"),
        ("huggingface.co/org/repo/blob/main/m.gguf", "hf:org/repo/m.gguf"),
        ("www.huggingface.co/org/repo/resolve/v1.0/m.gguf", "hf:org/repo@v1.0/m.gguf"),
    ],
)
def test_the_hub_as_ollama_ramalama_and_docker_model_spell_it(typed: str, canonical: str) -> None:
    ref = parse(typed)
    assert isinstance(ref, HfRef) and ref.id == canonical and parse(ref.id).id == canonical


def test_a_local_path_that_starts_like_the_hub_is_written_with_dot_slash(tmp_path: Path) -> None:
    assert isinstance(parse("./hf.co/org/m.gguf", cwd=tmp_path), FileRef)
    with pytest.raises(InvalidModelRef, match=r"hf\.co/org"):
        parse("hf.co/org")  # the Hub form needs a repo


@pytest.mark.parametrize("typed", ["TheOrg/Tiny-GGUF", "TheOrg/Tiny-GGUF:Q4_K_M"])
def test_a_bare_org_repo_that_is_no_file_suggests_its_hub_ref(typed: str, tmp_path: Path) -> None:
    for command in (["ensure", typed], ["inspect", typed]):
        failed = run_cli(*command, cache_dir=tmp_path / "cache", cwd=tmp_path)
        assert failed.code == 3, failed.stderr
        assert f"write hf:{typed}" in failed.stderr
        suggested = failed.stderr.rsplit("write ", 1)[1].strip()
        assert isinstance(parse(suggested), HfRef)  # the suggestion is a Hub ref as printed
    (tmp_path / "TheOrg").mkdir()
    (tmp_path / "TheOrg" / "Tiny-GGUF").write_bytes(b"not a model")
    there = run_cli("inspect", "TheOrg/Tiny-GGUF", cache_dir=tmp_path / "cache", cwd=tmp_path)
    assert "hf:" not in there.stderr  # a file that exists is that file
