"""A registry token service (the Docker/distribution "token" auth flow) on 127.0.0.2 — another host than
the registry on 127.0.0.1, as Docker Hub's auth.docker.io or GHCR's token endpoint are.

``GET /token?service=…&scope=repository:NAME:pull,push`` with optional Basic credentials answers
``{"token": JWT}``. The JWT is RS256-signed by a self-signed certificate carried in its ``x5c`` header;
the registry trusts that certificate (``rootcertbundle``). Anonymous callers get ``pull`` on ``public/*``
only; known users get what they ask for; wrong passwords get 401. Every issued token is counted.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

SERVICE = "mprov-test-registry"
ISSUER = "mprov-test-token-issuer"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    def __init__(self, workdir: Path, users: dict[str, str]) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users = users
        self.issued: list[dict[str, Any]] = []
        #: OAuth2 refresh tokens ("identity tokens" in Docker's words) this service accepts: token -> user
        self.refresh_tokens: dict[str, str] = {}
        #: token lifetime; the registry allows 60 s of clock skew past ``exp``, so -57 means "dead in 3 s"
        self.ttl_s = 300
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mprov test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path = workdir / "token-signer.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._der = self.cert.public_bytes(serialization.Encoding.DER)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

            def do_POST(self) -> None:
                server._handle_oauth(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.realm = f"http://127.0.0.2:{self.port}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def registry_auth_yaml(self) -> str:
        return (
            "auth:\n  token:\n"
            f"    realm: {self.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
            f"    rootcertbundle: {self.cert_path}\n"
        )

    def _sign(self, claims: dict[str, Any]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._der).decode()]}
        signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64(signature)

    def _refuse(self, h: BaseHTTPRequestHandler, status: int = 401) -> None:
        h.send_response(status)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        """GET: the token spec's Basic-or-anonymous token request."""
        query = parse_qs(urlsplit(h.path).query)
        user = None
        header = h.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(name) != password:
                return self._refuse(h)
            user = name
        self._grant(h, query, user, "token")

    def _handle_oauth(self, h: BaseHTTPRequestHandler) -> None:
        """POST: the OAuth2 form (distribution's oauth spec); only the refresh_token grant is offered."""
        length = int(h.headers.get("Content-Length") or 0)
        form = parse_qs(h.rfile.read(length).decode())
        if form.get("grant_type") != ["refresh_token"] or not form.get("client_id"):
            return self._refuse(h, 400)
        user = self.refresh_tokens.get((form.get("refresh_token") or [""])[0])
        if user is None:
            return self._refuse(h)
        self._grant(h, form, user, "access_token")

    def _grant(self, h: BaseHTTPRequestHandler, query: dict[str, list[str]], user: str | None, key: str) -> None:
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            granted = wanted if user else (["pull"] if repo.startswith("public/") and "pull" in wanted else [])
            access.append({"type": kind, "name": repo, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user or "",
            "aud": SERVICE,
            "exp": now + self.ttl_s,
            "nbf": now - 120,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = self._sign(claims)
        self.issued.append({"user": user, "access": access, "token": token})
        body = json.dumps({key: token, "expires_in": 300}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
