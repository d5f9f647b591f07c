"""What the benchmarks share: a server under test started on loopback, and load driven at it.

A server runs as a subprocess for as long as it is healthy (`running`); the load comes from
threads of this process, each with its own client, for a fixed number of requests
(`drive_calls`; `drive` is the same over raw keep-alive HTTP connections). A level's latencies
become one `LevelResult`; `LevelSteps` reports each level as a `level` step.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from modalfuse.progress import SILENT, ProgressReporter

Answer = TypeVar("Answer")


@dataclass
class LevelResult:
    """Latency and throughput of one target at one concurrency level."""

    target: str
    concurrency: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput_rps: float
    model: str = ""  # the bundle's model version
    workers: int = 1  # server processes (1 for the in-process Predictor)
    samples: list[float] = field(default_factory=list, repr=False)  # seconds, not reported


class LevelSteps:
    """A benchmark's measured levels, counted as `level` steps to a reporter (`total` known
    before the first), with what runs between them (a server starting) named at the same count."""

    def __init__(self, total: int, reporter: ProgressReporter = SILENT):
        self.total, self.reporter, self.done = total, reporter, 0

    def doing(self, name: str) -> None:
        """`name` is under way (a level, or a server starting before one)."""
        self.reporter.on_step("level", name, self.done, self.total)

    def measured(self, name: str) -> None:
        """Level `name` is measured."""
        self.done += 1
        self.reporter.on_step("level", name, self.done, self.total)


def summarize(name: str, concurrency: int, latencies: list[float], errors: int,
              wall: float) -> LevelResult:
    """One level's result from its latencies (seconds) and its wall time (seconds)."""
    ms = np.array(latencies) * 1000
    return LevelResult(name, concurrency, len(ms), errors, float(np.percentile(ms, 50)),
                       float(np.percentile(ms, 99)), float(ms.mean()), len(ms) / wall,
                       samples=list(latencies))


def free_port() -> int:
    """A local TCP port free right now, for a benchmarked server to listen on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command(bundle: Path, port: int, workers: int | None = None) -> list[str]:
    """The `modalfuse serve` command line for `bundle` on loopback `port`, run by this
    interpreter (with `--workers` when given)."""
    cmd = [sys.executable, "-c", "from modalfuse.cli import main; main()", "serve",
           "--bundle", str(bundle), "--host", "127.0.0.1", "--port", str(port)]
    return cmd if workers is None else [*cmd, "--workers", str(workers)]


def wait_http(port: int, path: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until the server answers `path` with 200; `RuntimeError` if it exits or times out."""
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with code {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} did not answer {path} in {timeout:.0f}s")


@contextmanager
def running(cmd: list[str], env: dict[str, str], port: int, health: str, log: Path):
    """Run a server command (output to `log`) while it is healthy; it is terminated on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            try:
                wait_http(port, health, proc)
            except RuntimeError as e:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{e}; {cmd[2:5]} said:\n{tail}") from None
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class RawConnection:
    """One keep-alive HTTP/1.1 connection that sends a prepared request and reads the answer
    with as little client work as it can: `http.client` parses every response's headers with
    the email package, which on two cores took CPU from the servers it measured."""

    def __init__(self, port: int, timeout: float = 60.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send `request` (complete bytes) and return (status, body)."""
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        fields = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            fields[k.strip().lower()] = v.strip()
        if b"content-length" in fields:
            return status, self._take(int(fields[b"content-length"]))
        body = b""  # chunked
        while True:
            size = int(self._line().split(b";")[0], 16)
            if size == 0:
                self._line()
                return status, body
            body += self._take(size)
            self._take(2)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def drive_calls(open_client: Callable[[], AbstractContextManager[Callable[[], Answer]]],
                ok: Callable[[Answer], bool], concurrency: int, n_requests: int, warmup: int,
                name: str) -> LevelResult:
    """n_requests calls spread over `concurrency` threads; latency per call.

    Each thread opens its own client (`open_client` yields its call), makes `warmup` calls,
    then all start together; only the call is timed, `ok` judges its answer afterwards."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(n_requests))
    barrier = threading.Barrier(concurrency + 1)

    def worker() -> None:
        nonlocal errors
        with open_client() as call:
            for _ in range(warmup):
                call()
            barrier.wait()
            local, bad = [], 0
            while True:
                with lock:
                    nxt = next(counter, None)
                if nxt is None:
                    break
                t0 = time.perf_counter()
                answer = call()
                local.append(time.perf_counter() - t0)
                bad += not ok(answer)
        with lock:
            latencies.extend(local)
            errors += bad

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return summarize(name, concurrency, latencies, errors, wall)


def drive(port: int, path: str, body: bytes, concurrency: int, n_requests: int,
          warmup: int, name: str, ok: Callable[[int, bytes], bool]) -> LevelResult:
    """n_requests POSTs spread over `concurrency` keep-alive connections; latency per request."""
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
               "Connection: keep-alive\r\n\r\n").encode() + body

    @contextmanager
    def connection() -> Iterator[Callable[[], tuple[int, bytes]]]:
        conn = RawConnection(port)
        try:
            yield lambda: conn.exchange(request)
        finally:
            conn.close()

    return drive_calls(connection, lambda answer: ok(*answer), concurrency, n_requests,
                       warmup, name)
