"""A static file server on 127.0.0.1 for download tests: honours Range, and can be told to
drop a connection mid-file, answer with an error status, or ignore Range, once per path, or to
send a path slowly (so that a test can interrupt the download part-way)."""

from __future__ import annotations

import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class FileServer:
    """Serves ``root``; ``url`` is its base. Stop it with ``close()``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.drop_after: dict[str, int] = {}  # path -> bytes of the body sent before hanging up
        self.fail_with: dict[str, int] = {}  # path -> status to answer once
        self.ignore_range: set[str] = set()
        self.bytes_per_second: dict[str, int] = {}  # path -> rate its bodies are sent at
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"

    def requested(self, path: str) -> list[str | None]:
        """The Range headers of the requests for ``path`` so far."""
        with self._lock:
            return [r for p, r in self.requests if p == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                path = unquote(urlsplit(self.path).path)
                range_header = self.headers.get("Range")
                with server._lock:
                    server.requests.append((path, range_header))
                    status = server.fail_with.pop(path, None)
                    drop = server.drop_after.pop(path, None)
                    ignore_range = path in server.ignore_range
                    rate = server.bytes_per_second.get(path)
                file = (server.root / path.lstrip("/")).resolve()
                if status is not None:
                    self.send_error(status)
                    return
                if not file.is_relative_to(server.root.resolve()) or not file.is_file():
                    self.send_error(HTTPStatus.NOT_FOUND)
                    return
                data = file.read_bytes()
                start = 0
                if range_header and not ignore_range:
                    start = int(range_header.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(HTTPStatus.PARTIAL_CONTENT)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(HTTPStatus.OK)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if drop is not None:
                    # Promise the whole body, send part of it, hang up: a dropped connection.
                    self.wfile.write(body[:drop])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if rate is None:
                    self.wfile.write(body)
                    return
                block = 16 * 1024
                for start in range(0, len(body), block):
                    self.wfile.write(body[start : start + block])
                    self.wfile.flush()
                    time.sleep(block / rate)

        return Handler
