"""A small fake Hugging Face Hub over real HTTP, enough for huggingface_hub itself to work against it.

- ``GET /api/models/{repo}[/revision/{rev}]`` (``?blobs=true``: size, blobId, lfs.sha256 per sibling)
- ``GET /api/models/{repo}/tree/{rev}?recursive=true`` (entries with oid and lfs.oid)
- ``HEAD/GET /{repo}/resolve/{rev}/{path}``: small files 200 with X-Repo-Commit and the git blob id as
  ETag; LFS files 302 to a separate CDN origin (a pre-signed-looking URL) with X-Repo-Commit,
  X-Linked-Etag (sha256) and X-Linked-Size
- ``X-Error-Code`` on errors (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo); private repos
  need ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .fileserver import FileServer

CDN_SIGNATURE = "X-Amz-Signature=cdnsecret0123456789"


@dataclass
class HubFile:
    path: str
    stored: Path
    size: int
    git_sha1: str
    lfs_sha256: str | None


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    gated: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        return rev if rev in self.commits else None


class FakeHub:
    def __init__(self, root: Path, *, lfs_threshold: int = 1024, cdn: FileServer | None = None) -> None:
        self.root = root
        self.store = root / "hub-store"
        self.store.mkdir(parents=True, exist_ok=True)
        self.server = FileServer(root / "hub-static")
        self.cdn = cdn or FileServer(root / "cdn")
        self.lfs_threshold = lfs_threshold
        self.repos: dict[str, Repo] = {}
        self.tokens: set[str] = set()
        self._counter = 0
        self.server.routes["/api/models/"] = self._api
        self.server.routes["/"] = self._resolve
        self.url = self.server.url

    def close(self) -> None:
        self.server.close()
        self.cdn.close()

    # ------------------------------------------------------------------------------------- content
    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        branch: str = "main",
        private: bool = False,
        gated: bool = False,
        tag: str | None = None,
    ) -> str:
        self.repos.setdefault(repo_id, Repo(repo_id, private=private, gated=gated))
        return self.commit(repo_id, files, branch=branch, tag=tag)

    def commit(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main", tag: str | None = None) -> str:
        repo = self.repos[repo_id]
        self._counter += 1
        entries: dict[str, HubFile] = {}
        for path, data in files.items():
            git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            lfs = (
                hashlib.sha256(data).hexdigest()
                if len(data) >= self.lfs_threshold or path.endswith((".gguf", ".safetensors"))
                else None
            )
            if lfs is not None:
                stored = self.cdn.root / "lfs" / lfs
                stored.parent.mkdir(parents=True, exist_ok=True)
                if not stored.exists():
                    stored.write_bytes(data)
            else:
                stored = self.store / git_sha1
                stored.write_bytes(data)
            entries[path] = HubFile(path, stored, len(data), git_sha1, lfs)
        commit = hashlib.sha1(f"{repo_id}:{self._counter}:{sorted(entries)}".encode()).hexdigest()
        repo.commits[commit] = entries
        repo.branches[branch] = commit
        if tag:
            repo.tags[tag] = commit
        return commit

    def lfs_path(self, data: bytes) -> str:
        return "/lfs/" + hashlib.sha256(data).hexdigest()

    # ---------------------------------------------------------------------------------------- HTTP
    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _json(self, h: BaseHTTPRequestHandler, payload: Any) -> None:
        body = json.dumps(payload).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _authorized(self, h: BaseHTTPRequestHandler, repo: Repo) -> bool:
        if not (repo.private or repo.gated):
            return True
        auth = h.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.tokens

    def _repo_or_error(self, h: BaseHTTPRequestHandler, repo_id: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized(h, repo)):
            self._error(h, 401 if repo is not None else 404, "RepoNotFound", f"Repository {repo_id} not found")
            return None
        if repo.gated and not self._authorized(h, repo):
            self._error(h, 403, "GatedRepo", f"Access to {repo_id} is restricted")
            return None
        return repo

    def _api(self, h: BaseHTTPRequestHandler, head: bool) -> bool:
        parts = urlsplit(h.path)
        query = parse_qs(parts.query)
        m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/?]+)(?:/(.*))?)?$", parts.path)
        if m is None:
            return False
        repo = self._repo_or_error(h, m.group(1))
        if repo is None:
            return True
        kind, rev = m.group(2), unquote(m.group(3) or "main")
        commit = repo.resolve(rev)
        if commit is None:
            self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return True
        files = repo.commits[commit]
        if kind == "tree":
            self._json(
                h,
                [
                    {
                        "type": "file",
                        "oid": f.git_sha1,
                        "size": f.size,
                        "path": f.path,
                        **({"lfs": {"oid": f.lfs_sha256, "size": f.size, "pointerSize": 134}} if f.lfs_sha256 else {}),
                    }
                    for f in sorted(files.values(), key=lambda f: f.path)
                ],
            )
            return True
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in sorted(files.values(), key=lambda f: f.path):
            sibling: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                sibling.update({"size": f.size, "blobId": f.git_sha1})
                if f.lfs_sha256:
                    sibling["lfs"] = {"sha256": f.lfs_sha256, "size": f.size, "pointerSize": 134}
            siblings.append(sibling)
        self._json(
            h,
            {
                "_id": commit[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": commit,
                "private": repo.private,
                "gated": repo.gated,
                "disabled": False,
                "siblings": siblings,
                "tags": [],
                "downloads": 0,
                "likes": 0,
            },
        )
        return True

    def _resolve(self, h: BaseHTTPRequestHandler, head: bool) -> bool:
        parts = urlsplit(h.path)
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", parts.path)
        if m is None:
            return False
        repo = self._repo_or_error(h, m.group(1))
        if repo is None:
            return True
        rev, path = unquote(m.group(2)), unquote(m.group(3))
        commit = repo.resolve(rev)
        if commit is None:
            self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return True
        f = repo.commits[commit].get(path)
        if f is None:
            self._error(h, 404, "EntryNotFound", f"{path} does not exist at {rev}")
            return True
        if f.lfs_sha256:
            location = f"{self.cdn.url}/lfs/{f.lfs_sha256}?{CDN_SIGNATURE}&name={quote(path)}"
            h.send_response(302)
            h.send_header("Location", location)
            h.send_header("X-Repo-Commit", commit)
            h.send_header("X-Linked-Etag", f'"{f.lfs_sha256}"')
            h.send_header("X-Linked-Size", str(f.size))
            h.send_header("ETag", f'"{f.git_sha1}"')
            h.send_header("Content-Length", "0")
            h.end_headers()
            return True
        self.server.serve_file(
            h, parts.path, head, file=f.stored, etag=f'"{f.git_sha1}"', extra_headers={"X-Repo-Commit": commit}
        )
        return True
