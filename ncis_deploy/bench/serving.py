"""A bounded load test of a Triton server serving the purifier, and the malformed-request checks.

Used by ``benchmarks/triton_load.py`` (the recorded result) and by the test suite (a short version). Each client
is a thread with its own tritonclient connection (the clients are not meant to be shared across threads); every
reply is compared with the in-process runner's output for the same input, so a load test that "passes" with
wrong pixels is impossible.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from ncis_deploy.bench.stats import scale, summarize

_DTYPE_NAMES = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.float64): "FP64"}


def client_module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc
    return tc


def infer(tc, client, model: str, x: np.ndarray, name: str = "input") -> np.ndarray:
    inp = tc.InferInput(name, list(x.shape), _DTYPE_NAMES[x.dtype])
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], outputs=[tc.InferRequestedOutput("output")]).as_numpy("output")


def load_test(url: str, model: str, inputs: list[np.ndarray], references: list[np.ndarray], clients: int, *,
              requests_per_client: int | None = None, duration_s: float | None = None, protocol: str = "http",
              tolerance: float = 1e-5, progress: Callable[[str], None] | None = None) -> dict:
    """``clients`` concurrent clients send ``inputs`` round-robin (a fixed count each, or for ``duration_s``);
    returns throughput, latency percentiles (ms), errors, and the largest difference from ``references``."""
    if (requests_per_client is None) == (duration_s is None):
        raise ValueError("give exactly one of requests_per_client and duration_s")
    tc = client_module(protocol)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    stats = {"requests": 0, "images": 0, "mismatches": 0, "max_abs_diff": 0.0}
    start = threading.Barrier(clients + 1)
    deadline: list[float] = [0.0]

    def worker(k: int) -> None:
        client = tc.InferenceServerClient(url)
        try:
            start.wait()
            i = k
            while (requests_per_client is None and time.perf_counter() < deadline[0]) or \
                    (requests_per_client is not None and i - k < requests_per_client * clients):
                x, ref = inputs[i % len(inputs)], references[i % len(inputs)]
                t0 = time.perf_counter()
                try:
                    y = infer(tc, client, model, x)
                except Exception as e:  # every failure counts; the first few are kept for the report
                    with lock:
                        errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
                    i += clients
                    continue
                dt = time.perf_counter() - t0
                diff = float(np.abs(y.astype(np.float32) - ref).max()) if y.shape == ref.shape else float("inf")
                with lock:
                    latencies.append(dt)
                    stats["requests"] += 1
                    stats["images"] += x.shape[0]
                    stats["max_abs_diff"] = max(stats["max_abs_diff"], diff)
                    stats["mismatches"] += int(not diff <= tolerance)
                i += clients
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    if duration_s is not None:
        deadline[0] = time.perf_counter() + duration_s
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    result = {"clients": clients, "protocol": protocol, "wall_s": round(wall, 3), **stats,
              "errors": len(errors), "error_examples": errors[:3], "tolerance": tolerance,
              "throughput_img_s": stats["images"] / wall if wall > 0 else 0.0,
              "throughput_req_s": stats["requests"] / wall if wall > 0 else 0.0,
              "latency_ms": scale(summarize(latencies), 1e3) if latencies else None}
    if progress:
        lat = result["latency_ms"] or {}
        progress(f"{clients:>3} client(s): {result['throughput_img_s']:.1f} img/s, p50 {lat.get('median', 0):.1f} ms, "
                 f"p99 {lat.get('p99', 0):.1f} ms, {result['errors']} errors, max |diff| {stats['max_abs_diff']:.1e}")
    return result


def malformed_requests(url: str, model: str, good: np.ndarray, max_batch: int, protocol: str = "http") -> list[dict]:
    """Send each kind of malformed request, then a well-formed one; every bad one must be refused and the good one
    after it must still be answered (the server keeps serving)."""
    tc = client_module(protocol)
    from tritonclient.utils import InferenceServerException

    n, c, h, w = good.shape
    cases = {
        "wrong shape (4 channels)": lambda cl: infer(tc, cl, model, np.zeros((1, c + 1, h, w), good.dtype)),
        "wrong dtype (FP64)": lambda cl: infer(tc, cl, model, good.astype(np.float64)),
        "missing input (none sent)": lambda cl: cl.infer(model, []),
        "unknown input name": lambda cl: infer(tc, cl, model, good, name="image"),
        f"batch over the limit ({max_batch + 1})": lambda cl: infer(
            tc, cl, model, np.repeat(good[:1], max_batch + 1, axis=0)),
    }
    out = []
    client = tc.InferenceServerClient(url)
    try:
        for case, send in cases.items():
            try:
                send(client)
                refused, message = False, "answered"
            except InferenceServerException as e:
                refused, message = True, (e.message() or str(e)).splitlines()[0]
            try:
                ok = infer(tc, client, model, good).shape == good.shape
            except InferenceServerException:
                ok = False
            out.append({"case": case, "refused": refused, "message": message[:200], "next_request_ok": ok})
    finally:
        client.close()
    return out


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free right now (the OS picks them; a tiny race with other processes remains)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def batch_counters(metrics_url: str, model: str = "ncis_purifier") -> tuple[float, float]:
    """(inferences, executions) of ``model`` from Triton's Prometheus metrics; their deltas over a run give the
    mean batch the dynamic batcher formed."""
    import urllib.request

    text = urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        for key in ("nv_inference_count", "nv_inference_exec_count"):
            if line.startswith(key + "{") and f'model="{model}"' in line:
                values[key] = values.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return values.get("nv_inference_count", 0.0), values.get("nv_inference_exec_count", 0.0)


class ServerProcess:
    """``ncis-deploy serve EXPORT_DIR`` in a child process, on free loopback ports; ready when entered.

    On exit it sends SIGTERM and waits: ``returncode`` and ``output`` are then what the command did on shutdown.
    """

    def __init__(self, export_dir, *args: str, ready_timeout_s: float = 120.0):
        self.export_dir, self.args, self.ready_timeout_s = str(export_dir), [str(a) for a in args], ready_timeout_s
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.proc = None
        self.returncode: int | None = None
        self.output = ""

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def __enter__(self) -> "ServerProcess":
        import subprocess
        import sys
        import tempfile

        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ncis_deploy.cli", "serve", self.export_dir, "--http-port", str(self.http_port),
             "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port), *self.args],
            stdout=self._log, stderr=subprocess.STDOUT, text=True)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        import tritonclient.http as tc

        t_end = time.perf_counter() + self.ready_timeout_s
        while time.perf_counter() < t_end:
            if self.proc.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"serve exited with {self.proc.returncode} before it was ready:\n{self._log.read()}")
            try:
                client = tc.InferenceServerClient(self.http_url)
                try:
                    if client.is_server_ready() and client.is_model_ready("ncis_purifier"):
                        return
                finally:
                    client.close()
            except Exception:  # not listening yet
                pass
            time.sleep(0.25)
        raise TimeoutError(f"serve was not ready after {self.ready_timeout_s} s")

    def __exit__(self, *exc) -> None:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode
        self._log.seek(0)
        self.output = self._log.read()
        self._log.close()
