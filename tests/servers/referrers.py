"""A registry with the OCI referrers API: Debian's ``docker-registry`` (distribution 2.8, which has none) behind a
small front on 127.0.0.1 that adds it as the distribution spec 1.1 describes.

Every request is passed to the registry as it came (the ``Host`` header too, so its upload ``Location`` URLs
point back here). A manifest put with a ``subject`` is answered with ``OCI-Subject: <subject digest>`` and
remembered; ``GET /v2/<name>/referrers/<digest>[?artifactType=…]`` answers an image index of the manifests that
refer to it (``OCI-Filters-Applied: artifactType`` when filtered). Requests are counted by kind, server side.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from .nginx import free_port

_REFERRERS = re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>sha256:[0-9a-f]{64})$")
_MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$")
INDEX = "application/vnd.oci.image.index.v1+json"


class ReferrersRegistry:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.referrers: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.requests: Counter[str] = Counter()
        self._client = httpx.Client(timeout=60)
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                front.handle(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        path = urlsplit(request.path).path
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        found = _REFERRERS.match(path)
        if found and request.command == "GET":
            self.requests["referrers"] += 1
            return self._referrers(request, found["name"], found["digest"])
        manifest = _MANIFEST.match(path)
        if manifest and manifest["reference"].startswith("sha256-"):
            self.requests["referrers-tag"] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("content-length", "connection")}
        upstream = self._client.request(
            request.command, self.upstream + request.path, headers=headers, content=body, follow_redirects=False
        )
        extra: dict[str, str] = {}
        if manifest and request.command == "PUT" and upstream.status_code == 201:
            extra = self._remember(manifest["name"], body)
        request.send_response(upstream.status_code)
        for key, value in upstream.headers.items():
            if key.lower() not in ("content-length", "connection", "transfer-encoding", "content-encoding"):
                request.send_header(key, value)
        for key, value in extra.items():
            request.send_header(key, value)
        if request.command == "HEAD":
            request.send_header("Content-Length", upstream.headers.get("Content-Length", "0"))
            request.end_headers()
            return
        request.send_header("Content-Length", str(len(upstream.content)))
        request.end_headers()
        request.wfile.write(upstream.content)

    def _remember(self, name: str, body: bytes) -> dict[str, str]:
        try:
            manifest = json.loads(body)
        except ValueError:
            return {}
        subject = manifest.get("subject") if isinstance(manifest, dict) else None
        if not isinstance(subject, dict) or not isinstance(subject.get("digest"), str):
            return {}
        descriptor = {
            "mediaType": manifest.get("mediaType"),
            "digest": "sha256:" + hashlib.sha256(body).hexdigest(),
            "size": len(body),
            "artifactType": manifest.get("artifactType") or manifest.get("config", {}).get("mediaType"),
        }
        if manifest.get("annotations"):
            descriptor["annotations"] = manifest["annotations"]
        self.referrers.setdefault((name, subject["digest"]), []).append(descriptor)
        return {"OCI-Subject": subject["digest"]}

    def _referrers(self, request: http.server.BaseHTTPRequestHandler, name: str, digest: str) -> None:
        listed = self.referrers.get((name, digest), [])
        wanted = parse_qs(urlsplit(request.path).query).get("artifactType")
        if wanted:
            listed = [d for d in listed if d.get("artifactType") == wanted[0]]
        body = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": listed}).encode()
        request.send_response(200)
        request.send_header("Content-Type", INDEX)
        if wanted:
            request.send_header("OCI-Filters-Applied", "artifactType")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._client.close()
