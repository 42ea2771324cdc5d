#!/usr/bin/env python3
"""A plain Python HTTP origin, the kind of small internal model server people run: ``ThreadingHTTPServer``
sending 64 KiB writes, with Range support. It is CPU-bound: it needs a core of its own at full speed.

    python3 bench/pyorigin.py ROOT PORT [HOST]
"""

from __future__ import annotations

import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = "."

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = os.path.join(self.root, self.path.split("?", 1)[0].lstrip("/"))
        if not os.path.isfile(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = os.path.getsize(path)
        start, end = 0, size - 1
        asked = RANGE.match(self.headers.get("Range", ""))
        if asked:
            start = int(asked.group(1))
            end = min(int(asked.group(2)) if asked.group(2) else size - 1, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{os.stat(path).st_mtime_ns:x}"')
        self.end_headers()
        with open(path, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                data = fh.read(min(65536, left))
                if not data:
                    return
                try:
                    self.wfile.write(data)
                except OSError:
                    return
                left -= len(data)


def main() -> None:
    Handler.root = sys.argv[1]
    host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    server = ThreadingHTTPServer((host, int(sys.argv[2])), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
