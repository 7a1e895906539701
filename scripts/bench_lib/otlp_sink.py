"""An OTLP/HTTP (JSON) collector for the bench: accepts POST /v1/traces at once and counts the spans.

The bench runs it as its own process (`python otlp_sink.py --port N`) so that its CPU is neither
gw's nor the bench's: the tracing rows report it apart (gw's CPU per request leaves it out). Each
body is parsed as an ExportTraceServiceRequest (resourceSpans[].scopeSpans[].spans[]) and its spans
counted, so a row proves what gw really exported; GET /counts answers the tallies as JSON. A body
that is not OTLP/JSON is answered 400 and counted as bad, never as spans.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

try:
    import orjson

    _loads: Any = orjson.loads
except ImportError:  # the sink runs under any interpreter; orjson only makes it cheaper
    _loads = json.loads

TRACES = "/v1/traces"


def count_spans(body: bytes) -> int:
    """Spans in an OTLP/JSON ExportTraceServiceRequest; ValueError when the body is not one."""
    try:
        doc = _loads(body)
        return sum(len(scope.get("spans") or ()) for resource in doc["resourceSpans"]
                   for scope in resource.get("scopeSpans") or ())
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not an OTLP/JSON trace export: {exc!r}") from None


class Tallies:
    """What the sink received (its handler threads add under the lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans = 0
        self.posts = 0
        self.bytes = 0
        self.bad = 0

    def as_json(self) -> bytes:
        with self.lock:
            return json.dumps({"spans": self.spans, "posts": self.posts, "bytes": self.bytes,
                               "bad": self.bad}).encode()


def make_server(host: str, port: int) -> tuple[ThreadingHTTPServer, Tallies]:
    tallies = Tallies()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: gw's exporter reuses its connection

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.split("?", 1)[0] != TRACES:
                self._answer(404, b'{"error":"only POST /v1/traces"}')
                return
            try:
                spans = count_spans(body)
            except ValueError:
                with tallies.lock:
                    tallies.bad += 1
                self._answer(400, b'{"error":"not OTLP/JSON"}')
                return
            with tallies.lock:
                tallies.spans += spans
                tallies.posts += 1
                tallies.bytes += len(body)
            self._answer(200, b"{}")

        def do_GET(self) -> None:
            if self.path == "/counts":
                self._answer(200, tallies.as_json())
            else:
                self._answer(404, b'{"error":"GET /counts"}')

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass  # a line per POST would cost more than counting it

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server, tallies


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="OTLP/HTTP JSON sink: counts the spans POSTed to /v1/traces")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="0: any free port (the first line says which)")
    args = p.parse_args(argv)
    server, _ = make_server(args.host, args.port)
    print(f"otlp sink on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
