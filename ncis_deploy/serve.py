"""``ncis-deploy serve``: an exported purifier behind a real Triton Inference Server, through nvidia-pytriton.

pytriton starts the ``tritonserver`` binary it bundles (with only the Python backend) and forwards each dynamic
batch to a Python callable in this process; here that callable is one of our runners (ONNX Runtime by default),
so the server computes exactly what ``purify --backend onnxruntime`` computes. The model is published as
``ncis_purifier`` with tensors ``input``/``output``, the names ``export --triton`` writes, so one client works
against this server and against the official Triton container serving the exported repository.

Things pytriton 0.7 gets wrong unless handled (all measured here): its Python-backend stub loads the *system*
libpython unless ``LD_LIBRARY_PATH`` points at the running interpreter's lib dir; it binds 0.0.0.0 unless told
otherwise; a port already in use surfaces as a misleading 403 later, so ports are checked first; SIGTERM without
a handler leaves its workspace behind; and under numpy 2 its replies come back empty (so numpy 2 is refused).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ncis_deploy.errors import UserError
from ncis_deploy.exporters.manifest import BACKEND_ARTIFACT, DEFAULT_DIR, Export, open_export
from ncis_deploy.exporters.triton import PURIFIER

MODEL_NAME = PURIFIER
EXIT_TIMEOUT_S = 5  # in-flight requests get this long at shutdown; Triton's default 30 s makes Ctrl-C feel hung


@dataclass
class ServeOptions:
    export_dir: str = DEFAULT_DIR
    host: str = "127.0.0.1"  # loopback: exposing a server is a decision, not a default
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int | None = None  # None: the export's --batch MAX
    instances: int = 1
    queue_delay_us: int = 100
    backend: str = "onnxruntime"
    device: str = "cpu"  # onnxruntime: cpu or cuda[:N]
    threads: int | None = None  # threads per ONNX Runtime / OpenVINO instance; None: cores / instances
    precision: str = "auto"  # openvino only: auto, f32, bf16 or int8 (int8 serves the export's quantized ONNX)
    verbose: bool = False  # show tritonserver's own log


# --------------------------------------------------------------------------------------------------- checks
def require_pytriton():
    """Import pytriton or explain how to get it; refuse numpy 2, under which pytriton 0.7 returns empty outputs."""
    try:
        import pytriton.triton  # noqa: F401
        from importlib.metadata import version
    except ImportError:
        raise UserError("`serve` needs nvidia-pytriton (a bundled tritonserver): pip install 'ncis-deploy[serve]' "
                        "(x86-64 Linux, glibc >= 2.35; it pins numpy<2)") from None
    pv = version("nvidia-pytriton")
    if int(np.__version__.split(".")[0]) >= 2 and tuple(int(x) for x in pv.split(".")[:2]) <= (0, 7):
        raise UserError(f"nvidia-pytriton {pv} returns empty outputs under numpy {np.__version__}; install "
                        "numpy<2 in this environment (pip install 'numpy<2'), as its own requirements say")
    return pv


def check_ports(host: str, ports: dict[str, int]) -> None:
    """Fail now, with the port's name, rather than with tritonserver's misleading 403 a few seconds later."""
    seen: dict[int, str] = {}
    for what, port in ports.items():
        if not 1 <= port <= 65535:
            raise UserError(f"--{what}-port {port} is not a port number (1..65535)")
        if port in seen:
            raise UserError(f"--{what}-port and --{seen[port]}-port are both {port}; give them different ports")
        seen[port] = what
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise UserError(f"port {port} on {host} is already in use (another server?); choose another with "
                                    f"--{what}-port") from None
                raise UserError(f"cannot listen on {host}:{port} for {what}: {e.strerror or e}") from None


def python_library_env() -> dict[str, str]:
    """LD_LIBRARY_PATH with this interpreter's libpython first: the backend stub must embed *this* Python."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    if ".so" not in ldlib or not (Path(libdir) / ldlib).is_file():
        raise UserError(f"Triton's Python backend needs a shared libpython, but {ldlib or 'none'} was not found in "
                        f"{libdir or '?'}; use a Python built with --enable-shared (e.g. pyenv with "
                        "PYTHON_CONFIGURE_OPTS=--enable-shared, or the distribution's python3)")
    old = os.environ.get("LD_LIBRARY_PATH", "")
    parts = [libdir] + [p for p in old.split(":") if p and p != libdir]
    return {"LD_LIBRARY_PATH": ":".join(parts)}


def read_export(export_dir: str | os.PathLike, backend: str, precision: str | None = None) -> tuple[Export, Path]:
    """The opened export and the (verified) artifact ``backend`` serves (at ``precision``, for openvino)."""
    if backend not in BACKEND_ARTIFACT:
        raise UserError(f"--backend must be one of {', '.join(BACKEND_ARTIFACT)}, got {backend!r}")
    ex = open_export(export_dir)
    return ex, ex.artifact_for(backend, precision)


# --------------------------------------------------------------------------------------------------- server
class PurifierServer:
    """Start/stop a Triton server hosting the purifier; a context manager. ``start()`` returns once it is ready."""

    def __init__(self, opts: ServeOptions):
        self.opts = opts
        self.triton = None
        self.runners: list = []
        self._workspace: Path | None = None
        self._env_backup: dict[str, str | None] = {}
        self.description: dict = {}

    # ---- lifecycle
    def start(self) -> "PurifierServer":
        o = self.opts
        for what, v in (("--instances", o.instances), ("--max-batch", o.max_batch)):
            if v is not None and v < 1:
                raise UserError(f"{what} must be >= 1, got {v}")
        if o.queue_delay_us < 0:
            raise UserError(f"--queue-delay-us must be >= 0, got {o.queue_delay_us}")
        if o.backend != "openvino" and o.precision != "auto":
            raise UserError(f"--precision only applies to the openvino backend, not {o.backend}")
        export, artifact = read_export(o.export_dir, o.backend, o.precision)
        check_ports(o.host, {"http": o.http_port, "grpc": o.grpc_port, "metrics": o.metrics_port})
        pytriton_version = require_pytriton()
        env = python_library_env()
        t0 = time.perf_counter()
        try:
            self._start(export, artifact, env, pytriton_version)
        except BaseException:
            self.stop()
            raise
        self.description["ready_s"] = round(time.perf_counter() - t0, 2)
        return self

    def _start(self, export: Export, artifact: Path, env: dict, pytriton_version: str) -> None:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        from ncis_deploy.runners import make_runner

        o = self.opts
        threads = o.threads or max(1, (os.cpu_count() or 1) // o.instances)
        kw = {"threads": threads, "check_range": False} if o.backend in ("onnxruntime", "openvino") \
            else {"check_range": False}
        if o.backend == "openvino":
            kw["precision"] = o.precision
        for _ in range(o.instances):
            # out-of-range values are purified like any others (the output is clamped): pytriton fails a whole
            # dynamic batch on one error, so a check here would let one client's bad request fail its neighbours
            self.runners.append(make_runner(o.backend, artifact, device=o.device, **kw).activate())
        spec = self.runners[0].input_spec
        hi = spec.batch[1]
        max_batch = o.max_batch or export.max_batch
        if hi is not None and max_batch > hi:
            raise UserError(f"--max-batch {max_batch} exceeds what {artifact.name} accepts ({hi})")
        fixed = spec.fixed_hw
        dims = (spec.channels, *(fixed or (-1, -1)))
        dtype = np.dtype(spec.dtype).type

        def infer_fn(runner):
            @batch
            def infer(**inputs):
                return {"output": runner.infer(inputs["input"])}
            return infer

        for k, v in env.items():
            self._env_backup[k] = os.environ.get(k)
            os.environ[k] = v  # pytriton copies os.environ for tritonserver and the stub it starts
        self._workspace = Path(tempfile.mkdtemp(prefix="ncis-serve-"))
        config = TritonConfig(http_address=o.host, grpc_address=o.host, metrics_address=o.host,
                              http_port=o.http_port, grpc_port=o.grpc_port, metrics_port=o.metrics_port,
                              exit_timeout_secs=EXIT_TIMEOUT_S, log_verbose=1 if o.verbose else 0,
                              allow_gpu_metrics=False)
        self.triton = Triton(config=config, workspace=self._workspace / "pytriton")
        self.triton.bind(model_name=MODEL_NAME, infer_func=[infer_fn(r) for r in self.runners],
                         inputs=[Tensor(name="input", dtype=dtype, shape=dims)],
                         outputs=[Tensor(name="output", dtype=dtype, shape=dims)],
                         config=ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(
                             max_queue_delay_microseconds=o.queue_delay_us)), strict=True)
        self.triton.run()
        host = f"[{o.host}]" if ":" in o.host else o.host
        self.description = {
            "model": MODEL_NAME, "backend": o.backend, "artifact": str(artifact),
            "providers": getattr(self.runners[0], "providers", None),
            "precision": getattr(self.runners[0], "precision", None), "input": {"name": "input", "dtype":
            spec.dtype, "dims": ["N", *dims]}, "max_batch": max_batch, "instances": o.instances,
            "threads_per_instance": threads if o.backend in ("onnxruntime", "openvino") else None,
            "queue_delay_us": o.queue_delay_us, "http": f"http://{host}:{o.http_port}", "grpc": f"{host}:{o.grpc_port}",
            "metrics": f"http://{host}:{o.metrics_port}/metrics", "pytriton": pytriton_version,
            "purifier": export.config}

    def is_alive(self) -> bool:
        return self.triton is not None and self.triton.is_alive()

    def stop(self) -> None:
        if self.triton is not None:
            with contextlib.suppress(Exception):  # a half-started server may fail to stop; the workspace still goes
                self.triton.stop()
            self.triton = None
        for r in self.runners:
            with contextlib.suppress(Exception):
                r.deactivate()
        self.runners = []
        if self._workspace is not None:
            shutil.rmtree(self._workspace, ignore_errors=True)
            self._workspace = None
        for k, v in self._env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._env_backup = {}

    def __enter__(self) -> "PurifierServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def banner(self) -> list[str]:
        d = self.description
        inp = d["input"]
        _, c, h, w = inp["dims"]
        shape = f"[N<={d['max_batch']}, {c}, {'H' if h == -1 else h}, {'W' if w == -1 else w}]"
        where = f", {', '.join(d['providers'])}" if d.get("providers") else ""
        where += f", {d['precision']}" if d.get("precision") else ""
        return [f"serving {d['model']}: {d['backend']}{where} ({Path(d['artifact']).name}), {inp['dtype']} {shape} "
                f"in [0, 1], dynamic batching (queue delay {d['queue_delay_us']} µs), {d['instances']} instance(s)",
                f"  HTTP     {d['http']}/v2/models/{d['model']}/infer",
                f"  gRPC     {d['grpc']}",
                f"  metrics  {d['metrics']}",
                f"ready in {d['ready_s']} s; Ctrl-C or SIGTERM stops it"]


def serve_forever(opts: ServeOptions, say: Callable[[str], None]) -> None:
    """Serve until SIGINT/SIGTERM (then stop cleanly) or until the server dies (then a UserError)."""
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum, _frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    # pytriton prints tritonserver's whole log on stdout; without --verbose it goes to a file, kept only on failure
    fd, log_name = tempfile.mkstemp(prefix="ncis-serve-", suffix=".log")
    keep_log = False
    try:
        with os.fdopen(fd, "w") as log_file, \
                (contextlib.nullcontext() if opts.verbose else contextlib.redirect_stdout(log_file)):
            try:
                with PurifierServer(opts) as server:
                    for line in server.banner():
                        say(line)
                    while not stop.wait(0.5):
                        if not server.is_alive():
                            keep_log = True
                            raise UserError(f"the Triton server stopped unexpectedly; its log is {log_name}")
                    say(f"{received[0]}: stopping the server")
            except UserError:
                raise
            except Exception as e:  # pytriton's own start-up failures: keep the log that explains them
                keep_log = True
                raise UserError(f"the Triton server did not start ({type(e).__name__}: {e}); its log is "
                                f"{log_name}") from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if not keep_log:
            with contextlib.suppress(OSError):
                os.unlink(log_name)
    say("stopped")
