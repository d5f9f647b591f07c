"""The helpers every benchmark drives its server with: load spread over client threads, raw
keep-alive HTTP, the serve command line."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from modalfuse.bench.servers import drive, drive_calls, free_port, serve_command


def test_drive_calls_makes_every_call_once_and_counts_refused_answers():
    opened, closed, calls = [], [], iter(range(10**6))
    lock = threading.Lock()

    @contextmanager
    def client():
        with lock:
            opened.append(1)
        yield lambda: next(calls)
        with lock:
            closed.append(1)

    r = drive_calls(client, lambda n: n % 2 == 0, concurrency=3, n_requests=40, warmup=2,
                    name="fake")
    assert (r.target, r.concurrency, r.requests) == ("fake", 3, 40)
    assert len(opened) == len(closed) == 3
    assert next(calls) == 3 * 2 + 40  # warm-up calls, then exactly n_requests timed ones
    assert 0 < r.errors < 40 and r.p50_ms <= r.p99_ms and r.throughput_rps > 0
    assert len(r.samples) == 40


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the benchmarked servers

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200 if body == b'{"x": 1}' else 400)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_drive_posts_over_keep_alive_connections():
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = drive(port, "/echo", b'{"x": 1}', 2, 30, 1, "echo",
                  lambda status, data: status == 200 and data == b'{"x": 1}')
    finally:
        server.shutdown()
        server.server_close()
    assert (r.requests, r.errors, r.concurrency) == (30, 0, 2)


def test_serve_command_binds_loopback_and_passes_workers():
    cmd = serve_command("b", 8123, 2)  # type: ignore[arg-type]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[-2:] == ["--workers", "2"]
    assert "--workers" not in serve_command("b", 8123)  # type: ignore[arg-type]
