"""A local HTTP server with the answers an image fetcher must survive, on a free loopback port."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


def _handler(photo: bytes):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if path == "/photo":  # a text/plain Content-Type: the bytes decide the format
                self._send(200, photo, {"Content-Type": "text/plain"})
            elif path == "/redirect":  # ?to=<url>
                self._send(302, headers={"Location": query.removeprefix("to=")})
            elif path == "/redirect-loop":
                self._send(302, headers={"Location": "/redirect-loop"})
            elif path == "/missing":
                self._send(404, b"no such image")
            elif path == "/declared-huge":
                self._send(200, photo, {"Content-Length": str(10**12)})
            elif path == "/endless":  # no Content-Length, chunks until the client hangs up
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"\xff" * 65536
                try:
                    while True:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except OSError:
                    pass
            elif path == "/trickle":  # a byte every 0.2 s: each read is quick, the whole is not
                self.send_response(200)
                self.send_header("Content-Length", str(len(photo)))
                self.end_headers()
                try:
                    for byte in photo:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.2)
                except OSError:
                    pass
            else:
                self._send(404)

    return Handler


@contextmanager
def image_server(photo: bytes, host: str = "127.0.0.1") -> Iterator[str]:
    """Yields the server's base URL, e.g. http://127.0.0.1:PORT."""
    server = ThreadingHTTPServer((host, 0), _handler(photo))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
