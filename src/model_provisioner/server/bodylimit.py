"""A cap on HTTP request bodies for the API (413), so no caller can make the server buffer gigabytes.

Every request body the API accepts is a small JSON object; ``Content-Length`` over the cap is refused before a
byte is read, and a body without a length (chunked) is cut the moment it passes the cap.
"""

from __future__ import annotations

import json
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]

#: default cap: every request body of the API is a small JSON object
DEFAULT_MAX_BODY_BYTES = 64 * 1024


class BodyLimit:
    """Pure ASGI middleware (works under any Starlette/FastAPI version)."""

    def __init__(self, app: Any, limit: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        # every API body is small: read it here (at most the cap), then hand it on; a chunked body that
        # passes the cap is refused at once, before the application parses a byte of it
        messages: list[Message] = []
        received = 0
        while True:
            message: Message = await receive()
            messages.append(message)
            if message.get("type") != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.limit:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return dict(await receive())

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(
            {
                "error": {
                    "code": "body_too_large",
                    "message": f"request body larger than {self.limit} bytes; every API request body is a small "
                    "JSON object (the operator can raise api_max_body_bytes)",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
