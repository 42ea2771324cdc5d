"""``hf:`` refs: the Hub API through ``huggingface_hub`` (endpoint, token, errors), bytes through our engine.

The plan pins the revision to a commit (``model_info(..., files_metadata=True)`` gives the commit sha and,
per file, its size, git blob id and LFS sha256); LFS files are always verified against the Hub's sha256,
small git files against their git blob id.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from model_provisioner.config.settings import Settings
from model_provisioner.core.errors import CorruptModel, NotFound, PolicyDenied, TransferFailed
from model_provisioner.core.paths import check_relative_path
from model_provisioner.core.redact import redact_text, redact_url
from model_provisioner.core.refs import HfRef
from model_provisioner.formats.gguf import SPLIT_NAME_RE
from model_provisioner.formats.pickle_scan import is_pickle_weights
from model_provisioner.sources.plan import FetchPlan, RemoteFile
from model_provisioner.transfer.types import Source

log = logging.getLogger("model_provisioner")

CONFIG_FILES = frozenset({"config.json", "generation_config.json"})
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "added_tokens.json",
        "chat_template.jinja",
        "chat_template.json",
        "spiece.model",
        "sentencepiece.bpe.model",
        "preprocessor_config.json",
        "processor_config.json",
    }
)
SAFETENSORS_INDEX = "model.safetensors.index.json"
DEFAULT_QUANTS = ("Q4_K_M", "Q8_0")
AUX_GGUF_MARKERS = ("mmproj", "imatrix")


def _quant_pattern(quant: str) -> re.Pattern[str]:
    return re.compile(rf"(?:^|[^A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])", re.IGNORECASE)


def _is_aux(path: str) -> bool:
    name = path.rsplit("/", 1)[-1].lower()
    return any(marker in name for marker in AUX_GGUF_MARKERS)


def select_gguf(paths: Sequence[str], quant: str | None, repo: str) -> list[str]:
    """The GGUF file(s) for ``quant`` (default Q4_K_M, then Q8_0, then the first GGUF), all split parts."""
    ggufs = sorted(p for p in paths if p.lower().endswith(".gguf") and not _is_aux(p))
    if not ggufs:
        raise NotFound(f"hf:{repo} has no GGUF files (mmproj/imatrix files are not models)")
    for candidate in [quant] if quant else list(DEFAULT_QUANTS):
        assert candidate is not None
        pattern = _quant_pattern(candidate)
        matches = [p for p in ggufs if pattern.search(p)]
        if matches:
            return _split_group(sorted(matches, key=lambda p: (p.count("/"), p)), repo)
    if quant:
        available = sorted(
            {
                m.group(0).strip("-_./").upper()
                for p in ggufs
                if (m := re.search(r"(?i)(?:I?Q\d\w*|[BF]F?16|F32)", p.rsplit("/", 1)[-1]))
            }
        )
        raise NotFound(f"hf:{repo} has no {quant} GGUF; quantizations present: {', '.join(available) or 'none'}")
    return _split_group(ggufs, repo)


def _split_group(matches: list[str], repo: str) -> list[str]:
    first = matches[0]
    m = SPLIT_NAME_RE.search(first)
    if m is None:
        return [first]
    prefix, count = first[: m.start()], int(m.group(2))
    parts = sorted(
        p
        for p in matches
        if p.startswith(prefix)
        and (pm := SPLIT_NAME_RE.search(p)) is not None
        and int(pm.group(2)) == count
        and p[: pm.start()] == prefix
    )
    expected = [f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    missing = [p for p in expected if p not in parts]
    if missing:
        raise NotFound(f"hf:{repo}: split GGUF {prefix} is incomplete; missing {', '.join(missing)}")
    return expected


def select_repo_files(paths: Sequence[str], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """The minimal set a vLLM/TGI engine needs; ``include``/``exclude`` globs override."""
    if include:
        chosen = [p for p in paths if any(fnmatch.fnmatchcase(p, g) for g in include)]
    else:
        top = [p for p in paths if "/" not in p]
        has_safetensors = any(p.endswith(".safetensors") for p in top)
        chosen = []
        for p in top:
            if (
                p in CONFIG_FILES
                or p in TOKENIZER_FILES
                or p.endswith(".safetensors")
                or p == SAFETENSORS_INDEX
                or p.endswith(".py")
                or (not has_safetensors and p.startswith("pytorch_model") and p.endswith((".bin", ".bin.index.json")))
            ):
                chosen.append(p)
    if exclude:
        chosen = [p for p in chosen if not any(fnmatch.fnmatchcase(p, g) for g in exclude)]
    return sorted(chosen)


def _endpoints(settings: Settings) -> list[tuple[str, str]]:
    return [(m, f"mirror {m}") for m in settings.hf_mirrors] + [(settings.hf_endpoint, "origin")]


def _model_info(ref: HfRef, settings: Settings) -> tuple[Any, str]:
    """model_info from the first endpoint that answers (mirrors first). Returns (info, endpoint)."""
    from huggingface_hub import HfApi  # noqa: PLC0415  # heavy: huggingface_hub, imported only when this path runs

    failures: list[str] = []
    endpoints = _endpoints(settings)
    for index, (endpoint, label) in enumerate(endpoints):
        is_origin = index == len(endpoints) - 1
        parts = urlsplit(endpoint)
        settings.policy.check_host(parts.scheme, parts.hostname or "", endpoint)
        api = HfApi(endpoint=endpoint, token=settings.hf_token if is_origin else False)
        try:
            info = api.model_info(ref.repo_id, revision=ref.revision_or_default, files_metadata=True)
            return info, endpoint
        except Exception as exc:  # the Hub client's errors and connection errors: classified below
            if isinstance(exc, (NotFound, PolicyDenied)):
                raise
            failures.append(f"{label}: {_hub_failure(exc, ref, endpoint, is_origin, settings)}")
        log.warning("%s: Hub API at %s failed (%s)", ref.id, endpoint, failures[-1])
    raise TransferFailed(f"{ref.id}: no Hub endpoint answered: {'; '.join(failures)}")


def _hub_failure(exc: Exception, ref: HfRef, endpoint: str, is_origin: bool, settings: Settings) -> str:
    """What a Hub endpoint's failure means: raised when it is final (the origin said not found, gated or
    refused; a proxy refused its credentials), else a short reason and the next endpoint is tried."""
    from huggingface_hub.errors import (  # noqa: PLC0415  # heavy: huggingface_hub, imported only when this path runs
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, RevisionNotFoundError):
        if is_origin:
            raise NotFound(
                f"{ref.id}: revision {ref.revision_or_default!r} not found in hf:{ref.repo_id} on {endpoint}"
            ) from None
        return "revision not found"
    if isinstance(exc, GatedRepoError):
        if is_origin:
            raise PolicyDenied(
                f"{ref.id}: hf:{ref.repo_id} is gated; accept its terms on the Hub and set HF_TOKEN"
            ) from None
        return "gated"
    if isinstance(exc, RepositoryNotFoundError):
        if is_origin:
            _not_found_with_token(
                ref, endpoint, settings, exc.response.status_code if exc.response is not None else None
            )
        return "repository not found"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status == 407:
            raise PolicyDenied(
                f"{ref.id}: the proxy refused its credentials for {endpoint} (HTTP 407); set the user and "
                "password in HTTPS_PROXY / HTTP_PROXY (http://user:password@host:port)"
            ) from None
        if is_origin and status in (401, 403):
            raise PolicyDenied(f"{ref.id}: {endpoint} refused access (HTTP {status}); check HF_TOKEN") from None
        return f"HTTP {status}"
    return f"{type(exc).__name__}: {redact_text(str(exc))[:200]}"


def _not_found_with_token(ref: HfRef, endpoint: str, settings: Settings, status: int | None) -> None:
    """The Hub answers a private repo it will not show as "not found": what that means depends on whether a
    token was sent, and the status tells a refused token (401) from one without access (403)."""
    where = f"hf:{ref.repo_id} on {endpoint}"
    if not settings.hf_token:
        raise NotFound(f"{ref.id}: repository {where} not found (if it is private or gated, set HF_TOKEN)")
    if status == 401:
        raise PolicyDenied(
            f"{ref.id}: the Hub refused the token (HTTP 401) for {where}; check HF_TOKEN (a new token: "
            "huggingface.co/settings/tokens)"
        )
    if status == 403:
        raise PolicyDenied(f"{ref.id}: the token lacks access to {where} (HTTP 403); ask for access or use another")
    raise NotFound(f"{ref.id}: repository {where} not found, or the token set (HF_TOKEN) lacks access to it")


def plan_hf(ref: HfRef, settings: Settings, *, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> FetchPlan:
    info, api_endpoint = _model_info(ref, settings)
    commit, siblings = _checked_listing(ref, info, api_endpoint)
    if ref.path is not None:
        if ref.path not in siblings:
            nearby = sorted(p for p in siblings if p.lower().endswith((".gguf", ".safetensors")))[:8]
            raise NotFound(
                f"{ref.id}: {ref.path!r} is not in hf:{ref.repo_id} at {commit[:12]}; files there include "
                f"{', '.join(nearby) or 'no model files'}"
            )
        paths = [ref.path]
        layout = "file"
    elif ref.quant is not None or (not include and _looks_like_gguf_repo(siblings)):
        paths = select_gguf(list(siblings), ref.quant, ref.repo_id)
        layout = "gguf-split" if len(paths) > 1 else "file"
    else:
        paths = select_repo_files(list(siblings), include, exclude)
        if not paths:
            raise NotFound(f"{ref.id}: no files selected from hf:{ref.repo_id} (check --include/--exclude)")
        if not include and not any(_is_transformers_weight(p) for p in paths):
            # an engine given config.json alone has nothing to load: never Active without weights
            present = ", ".join(sorted(siblings)[:8]) + (", ..." if len(siblings) > 8 else "")
            raise CorruptModel(
                ref.id,
                f"hf:{ref.repo_id} at {commit[:12]} has no loadable weights for vLLM/TGI (no *.safetensors or "
                f"pytorch_model*.bin; files: {present}); choose files with --include or a file ref "
                "hf:org/repo/<file>",
            )
        layout = "transformers"
        pickles = [p for p in paths if is_pickle_weights(p)]
        if pickles and not settings.allow_pickle:
            raise PolicyDenied(
                f"{ref.id}: hf:{ref.repo_id} has pickle weights only ({', '.join(pickles[:4])}), which run code "
                "when they are loaded; ask the publisher for safetensors, or set allow_pickle: true to fetch them "
                "(their imports are then checked: only torch's tensor rebuild functions are accepted)"
            )
    files = []
    for path in paths:
        check_relative_path(path, f"{ref.id}: Hub file name")
        sibling = siblings[path]
        lfs = sibling.lfs
        sources = tuple(
            Source(
                f"{endpoint}/{ref.repo_id}/resolve/{commit}/{quote(path)}",
                headers={"Authorization": f"Bearer {settings.hf_token}"}
                if settings.hf_token and label == "origin"
                else {},
                label=label,
            )
            for endpoint, label in _endpoints(settings)
        )
        files.append(
            RemoteFile(
                path=path,
                sources=sources,
                size=lfs.size if lfs is not None else sibling.size,
                sha256=lfs.sha256 if lfs is not None else None,
                git_sha1=None if lfs is not None else sibling.blob_id,
            )
        )
    return FetchPlan(
        available=tuple(siblings),
        layout=layout,
        files=tuple(files),
        revision=commit,
        metadata={
            "revision": commit,
            "repo_id": ref.repo_id,
            "hub_endpoint": redact_url(api_endpoint),
            # a private or gated repo: a warm hit asks the Hub whether the caller may read it (pipeline/access.py)
            **({"access": "restricted"} if getattr(info, "private", False) or getattr(info, "gated", False) else {}),
        },
    )


def hub_grants_access(repo_id: str, revision: str | None, settings: Settings) -> bool | None:
    """Whether the origin Hub lets this caller's token (or no token) read ``repo_id``: True, False, or None
    when it could not be asked (a network failure)."""
    from huggingface_hub import HfApi  # noqa: PLC0415  # heavy: huggingface_hub, imported only when this path runs
    from huggingface_hub.errors import (  # noqa: PLC0415
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
    )

    parts = urlsplit(settings.hf_endpoint)
    settings.policy.check_host(parts.scheme, parts.hostname or "", settings.hf_endpoint)
    api = HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token or False)
    try:
        api.model_info(repo_id, revision=revision)
    except (GatedRepoError, RepositoryNotFoundError):
        return False
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        return False if status in (401, 403, 404) else None
    except Exception:  # connection errors from the Hub client: not an answer
        return None
    return True


_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _checked_listing(ref: HfRef, info: Any, endpoint: str) -> tuple[str, dict[str, Any]]:
    """The commit and the files of a model_info answer, each field checked before anything trusts it: a
    hostile or broken Hub answer is a one-line TransferFailed naming the field, never a crash later."""

    def bad(what: str) -> TransferFailed:
        return TransferFailed(f"{ref.id}: the Hub at {endpoint} returned invalid metadata ({what}); not using it")

    commit = getattr(info, "sha", None)
    if not isinstance(commit, str) or not _COMMIT_RE.fullmatch(commit):
        raise bad(f"commit {str(commit)[:60]!r} is not 40 hex characters")
    siblings: dict[str, Any] = {}
    for sibling in getattr(info, "siblings", None) or []:
        name = getattr(sibling, "rfilename", None)
        if not isinstance(name, str):
            raise bad("a file without a name")
        size = getattr(sibling, "size", None)
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise bad(f"{name[:80]!r} has size {str(size)[:20]!r}")
        lfs = getattr(sibling, "lfs", None)
        if lfs is not None:
            lfs_sha, lfs_size = getattr(lfs, "sha256", None), getattr(lfs, "size", None)
            if not isinstance(lfs_sha, str) or not _SHA256_RE.fullmatch(lfs_sha):
                raise bad(f"{name[:80]!r} has LFS sha256 {str(lfs_sha)[:70]!r}")
            if not isinstance(lfs_size, int) or isinstance(lfs_size, bool) or lfs_size < 0:
                raise bad(f"{name[:80]!r} has LFS size {str(lfs_size)[:20]!r}")
        blob_id = getattr(sibling, "blob_id", None)
        if blob_id is not None and (not isinstance(blob_id, str) or not _COMMIT_RE.fullmatch(blob_id)):
            raise bad(f"{name[:80]!r} has git blob id {str(blob_id)[:60]!r}")
        siblings[name] = sibling
    return commit, siblings


def _is_transformers_weight(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".safetensors") or (name.startswith("pytorch_model") and name.endswith(".bin"))


def _looks_like_gguf_repo(siblings: dict[str, Any]) -> bool:
    """A repo whose weights are GGUF files is a GGUF repo (a ``config.json`` beside them, as many GGUF repos
    carry, does not make it a transformers repo): ``hf:org/repo`` then means its GGUF."""
    names = list(siblings)
    return any(n.lower().endswith(".gguf") for n in names) and not any(_is_transformers_weight(n) for n in names)
