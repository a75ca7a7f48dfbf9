"""A loopback HTTP proxy in front of the GCS emulator that answers some requests with 503.

gcsfs and tensorstore point at it (STORAGE_EMULATOR_HOST, TENSORSTORE_GCS_HTTP_URL) instead of
the emulator, so tests can show that transient storage errors are retried and persistent ones
fail the job with the storage error in the message.
"""
from __future__ import annotations

import http.client
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
               "proxy-authenticate", "host", "content-length"}


class FlakyProxy:
  """Forwards to `upstream`; `fail(method, path, n)` (n counts requests) decides which get a 503."""

  def __init__(self, upstream: str, fail: Callable[[str, str, int], bool]):
    self.upstream = urllib.parse.urlparse(upstream)
    self.fail = fail
    self.count = 0
    self.failed = 0
    self._lock = threading.Lock()
    proxy = self

    class Handler(BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):  # quiet
        pass

      def setup(self):
        super().setup()
        # Headers and body go out in two writes: without this, each response waits out a delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

      def _any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with proxy._lock:  # pylint: disable=protected-access
          proxy.count += 1
          n = proxy.count
          failing = proxy.fail(self.command, self.path, n)
          proxy.failed += failing
        if failing:
          payload = b'{"error": {"code": 503, "message": "injected: service unavailable"}}'
          self.send_response(503)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(payload)))
          self.end_headers()
          self.wfile.write(payload)
          return
        conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        conn.request(self.command, self.path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        self.send_response(response.status, response.reason)
        for k, v in response.getheaders():
          if k.lower() not in _HOP_BY_HOP:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
          self.wfile.write(data)
        conn.close()

      do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any

    self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
    threading.Thread(target=self.server.serve_forever, daemon=True).start()

  def close(self) -> None:
    self.server.shutdown()
    self.server.server_close()
