"""What the harness times: one adapter per backend and device around the runners of :mod:`ncis_deploy.runners`.

An adapter owns an active runner and, per batch, an input. ``prepare(x)`` makes the first, input-checked call
(``Runner.infer``) and sets up whatever later calls reuse (device buffers, a CUDA graph); ``run_once()`` runs one
query and returns its times in seconds:

* CPU (torch, onnxruntime CPU, OpenVINO): ``{"host"}``, the host clock around ``Runner.infer_impl`` (the input was
  checked once in ``prepare``; re-checking values every query would add a pass over the input to every timing).
* GPU, as trtexec splits it: ``{"host", "h2d", "compute", "d2h"}``. torch and TensorRT: CUDA events on the stream
  around each part, from pinned host memory (trtexec's setup). onnxruntime: the host clock around the three
  synchronous calls of the runner's IO binding (:class:`~ncis_deploy.runners.onnxruntime.DeviceBinding`).
  ``data_transfers=False`` (``--no-data-transfers``) keeps input and output on the device and times compute only.

The GPU adapters are written against the documented torch.cuda, onnxruntime IO-binding and cuda-python APIs and
are tested by the ``gpu`` / ``tensorrt``-marked tests where those exist (docs/status.md: where that has happened).
"""

from __future__ import annotations

import ctypes
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ncis_deploy.errors import UserError

perf = time.perf_counter


FP32 = "fp32"
PRECISIONS = (FP32, "bf16", "int8")  # what a bench target computes in; FP32 unless the spec says otherwise


@dataclass(frozen=True)
class BackendSpec:
    backend: str  # torch | onnxruntime | tensorrt | openvino
    device: str  # torch: cpu | cuda; onnxruntime: cpu | cuda | tensorrt (its provider); tensorrt: cuda; openvino: cpu
    precision: str = FP32  # fp32 | bf16 (openvino) | int8 (onnxruntime:cpu, openvino: the export's Q/DQ artifact)

    @property
    def label(self) -> str:
        """``backend:device``, plus ``:precision`` when it is not FP32 (so FP32 labels read as before)."""
        base = f"{self.backend}:{self.device}"
        return base if self.precision == FP32 else f"{base}:{self.precision}"

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"


# ------------------------------------------------------------------------------------------------------- memory
def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # Linux reports KiB, macOS bytes
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / (1 << 20) if os.uname().sysname == "Darwin" else r / 1024
    except Exception:  # noqa: BLE001
        return None


def device_used_mib() -> float | None:
    """Memory in use on the current CUDA device (all processes), or None without a usable GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            return (total - free) / (1 << 20)
    except Exception:  # noqa: BLE001
        pass
    try:
        from ncis_deploy.runners.tensorrt import import_cudart

        cudart = import_cudart()
        err, free, total = cudart.cudaMemGetInfo()
        if int(err) == 0:
            return (total - free) / (1 << 20)
    except Exception:  # noqa: BLE001
        pass
    return None


class MemoryProbe:
    """Peak RSS (and CUDA memory) over a region: ``start()`` before it, ``stop()`` after it returns the record."""

    def __init__(self, scope: str = "case", torch_cuda: bool = False, gpu: bool = False):
        self.scope, self.torch_cuda, self.gpu = scope, torch_cuda, gpu
        self._reset = False
        self._dev0: float | None = None

    def start(self) -> "MemoryProbe":
        self._reset = reset_peak_rss()
        if self.torch_cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        elif self.gpu:
            self._dev0 = device_used_mib()
        return self

    def stop(self) -> dict:
        out = {"rss_peak_mib": peak_rss_mib(), "rss_scope": self.scope if self._reset else "process",
               "cuda_max_allocated_mib": None, "gpu_used_delta_mib": None}
        if self.torch_cuda:
            import torch

            out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / (1 << 20)
        elif self.gpu and self._dev0 is not None:
            now = device_used_mib()
            out["gpu_used_delta_mib"] = None if now is None else now - self._dev0
        return out


# ------------------------------------------------------------------------------------------------------ targets
class Target:
    """A runner plus the timing of one query. Subclasses: :class:`HostTarget` and the GPU adapters."""

    timer = "host perf_counter around Runner.infer_impl"
    split = False  # reports h2d / compute / d2h

    def __init__(self, spec: BackendSpec, runner, *, cuda_graph: bool = False, data_transfers: bool = True):
        self.spec, self.runner = spec, runner
        self.cuda_graph, self.data_transfers = cuda_graph, data_transfers
        self.x: np.ndarray | None = None

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def providers(self) -> list[str] | None:
        return list(self.runner.providers) if hasattr(self.runner, "providers") else None

    @property
    def runtime(self) -> dict | None:
        """What the runtime says it really ran (OpenVINO: the compiled precision and layer precisions), or None."""
        record = getattr(self.runner, "record", None)
        return dict(record) if isinstance(record, dict) else None

    def activate(self) -> "Target":
        self.runner.activate()
        return self

    def accepts(self, shape: tuple[int, int, int, int]) -> str | None:
        """None if the artifact takes ``shape``, else why not (one line)."""
        spec = self.runner.input_spec
        if spec is None:
            return None
        for what, v, (lo, hi) in (("batch", shape[0], spec.batch), ("height", shape[2], spec.height),
                                  ("width", shape[3], spec.width)):
            if v < lo or (hi is not None and v > hi):
                return f"{what} {v} is outside what the artifact accepts ({spec.describe()})"
        return None

    def prepare(self, x: np.ndarray) -> None:
        self.x = x
        self.runner.infer(x)  # the checked call: dtype, layout, range, shape against the artifact

    def run_once(self) -> dict[str, float]:
        x = self.x
        t0 = perf()
        self.runner.infer_impl(x)
        return {"host": perf() - t0}

    def memory_probe(self, scope: str = "case") -> MemoryProbe:
        return MemoryProbe(scope)

    def release(self) -> None:
        """Free per-batch resources (device buffers, graphs); the runner stays active."""
        self.x = None

    def close(self) -> None:
        self.release()
        self.runner.deactivate()


class HostTarget(Target):
    """torch on CPU, onnxruntime with the CPU provider, OpenVINO."""


OPENVINO_PRECISION = {FP32: "f32", "bf16": "bf16", "int8": "int8"}  # bench's names -> the OpenVINO runner's


# ------------------------------------------------------------------------------------------------ torch on CUDA
class TorchCudaTarget(Target):
    timer = "cuda events (torch.cuda.Event) around H2D / forward / D2H on the current stream"
    split = True

    def prepare(self, x: np.ndarray) -> None:
        import torch

        self.release()
        super().prepare(x)
        dev = torch.device(self.runner.device)
        self.x_host = torch.from_numpy(x).pin_memory()
        self.x_dev = self.x_host.to(dev)
        purifier = self.runner.purifier
        with torch.inference_mode():
            self.y_dev = purifier(self.x_dev)
        self.y_host = torch.empty(self.y_dev.shape, dtype=self.y_dev.dtype).pin_memory()
        self.graph = None
        if self.cuda_graph:  # the capture pattern of the torch.cuda.graphs documentation
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(3):
                    purifier(self.x_dev)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.inference_mode():
                self.y_dev = purifier(self.x_dev)
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        torch.cuda.synchronize()

    def run_once(self) -> dict[str, float]:
        import torch

        e0, e1, e2, e3 = self.events
        t0 = perf()
        e0.record()
        if self.data_transfers:
            self.x_dev.copy_(self.x_host, non_blocking=True)
        e1.record()
        if self.graph is not None:
            self.graph.replay()
        else:
            with torch.inference_mode():
                self.y_dev = self.runner.purifier(self.x_dev)
        e2.record()
        if self.data_transfers:
            self.y_host.copy_(self.y_dev, non_blocking=True)
        e3.record()
        e3.synchronize()
        return {"host": perf() - t0, "h2d": e0.elapsed_time(e1) / 1e3, "compute": e1.elapsed_time(e2) / 1e3,
                "d2h": e2.elapsed_time(e3) / 1e3}

    def memory_probe(self, scope: str = "case") -> MemoryProbe:
        return MemoryProbe(scope, torch_cuda=True)

    def release(self) -> None:
        for k in ("x_host", "x_dev", "y_dev", "y_host", "graph", "events"):
            setattr(self, k, None)
        super().release()


# ------------------------------------------------------------------------------------------- onnxruntime on GPU
class OrtGpuTarget(Target):
    timer = "host perf_counter around onnxruntime's synchronous IO-binding calls"
    split = True

    def prepare(self, x: np.ndarray) -> None:
        self.release()
        super().prepare(x)
        # the runner's own binding, output preallocated: a CUDA graph replays with the addresses it captured
        self.bound = self.runner.bind(x, fixed_output=True)
        self.bound.run()  # with enable_cuda_graph this first run captures the graph

    def run_once(self) -> dict[str, float]:
        t0 = perf()
        if self.data_transfers:
            self.bound.update(self.x)
        t1 = perf()
        self.bound.run()
        t2 = perf()
        if self.data_transfers:
            self.bound.output()
        t3 = perf()
        return {"host": t3 - t0, "h2d": t1 - t0, "compute": t2 - t1, "d2h": t3 - t2}

    def memory_probe(self, scope: str = "case") -> MemoryProbe:
        return MemoryProbe(scope, gpu=True)

    def release(self) -> None:
        self.bound = None
        super().release()


# --------------------------------------------------------------------------------------------------- TensorRT
class TensorRTTarget(Target):
    """Times the TensorRT runner's own stream, buffers and (with --cuda-graph) its captured graph."""

    timer = "cuda events (cudaEventRecord on the runner's stream) around H2D / enqueue / D2H"
    split = True

    def prepare(self, x: np.ndarray) -> None:
        from ncis_deploy.runners.tensorrt import cuda_check

        self.release()
        super().prepare(x)  # sets the input shape, device buffers and, with use_cuda_graph, captures the graph
        r = self.runner
        cudart = r._cudart
        self._host: list[int] = []

        def pinned(shape, dtype) -> np.ndarray:
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            ptr = int(cuda_check("cudaMallocHost", cudart.cudaMallocHost(max(nbytes, 1))))
            self._host.append(ptr)
            buf = (ctypes.c_byte * nbytes).from_address(ptr)
            return np.frombuffer(buf, dtype=dtype).reshape(shape)

        self.h_in = pinned(x.shape, r._in_dtype)
        self.h_in[...] = x.astype(r._in_dtype)
        self.h_out = pinned(r._out_shape, r._out_dtype)
        self.events = [cuda_check("cudaEventCreate", cudart.cudaEventCreate()) for _ in range(4)]

    def run_once(self) -> dict[str, float]:
        from ncis_deploy.runners.tensorrt import cuda_check

        r = self.runner
        cudart, stream = r._cudart, r._stream
        kind = cudart.cudaMemcpyKind
        d_in, _ = r._buffers[r._in_name]
        d_out, _ = r._buffers[r._out_name]
        e0, e1, e2, e3 = self.events
        t0 = perf()
        cuda_check("cudaEventRecord", cudart.cudaEventRecord(e0, stream))
        if self.data_transfers:
            cuda_check("cudaMemcpyAsync", cudart.cudaMemcpyAsync(d_in, self.h_in.ctypes.data, self.h_in.nbytes,
                                                                 kind.cudaMemcpyHostToDevice, stream))
        cuda_check("cudaEventRecord", cudart.cudaEventRecord(e1, stream))
        if r._graph_exec is not None:
            cuda_check("cudaGraphLaunch", cudart.cudaGraphLaunch(r._graph_exec, stream))
        else:
            r._enqueue()
        cuda_check("cudaEventRecord", cudart.cudaEventRecord(e2, stream))
        if self.data_transfers:
            cuda_check("cudaMemcpyAsync", cudart.cudaMemcpyAsync(self.h_out.ctypes.data, d_out, self.h_out.nbytes,
                                                                 kind.cudaMemcpyDeviceToHost, stream))
        cuda_check("cudaEventRecord", cudart.cudaEventRecord(e3, stream))
        cuda_check("cudaEventSynchronize", cudart.cudaEventSynchronize(e3))
        host = perf() - t0

        def ms(a, b) -> float:
            return float(cuda_check("cudaEventElapsedTime", cudart.cudaEventElapsedTime(a, b))) / 1e3

        return {"host": host, "h2d": ms(e0, e1), "compute": ms(e1, e2), "d2h": ms(e2, e3)}

    def memory_probe(self, scope: str = "case") -> MemoryProbe:
        return MemoryProbe(scope, gpu=True)

    def release(self) -> None:
        cudart = getattr(self.runner, "_cudart", None)
        if cudart is not None:
            for ev in getattr(self, "events", None) or []:
                cudart.cudaEventDestroy(ev)
            for ptr in getattr(self, "_host", []):
                cudart.cudaFreeHost(ptr)
        self.events, self._host, self.h_in, self.h_out = [], [], None, None
        super().release()


# ------------------------------------------------------------------------------------------------------ factory
def make_target(spec: BackendSpec, artifact, *, threads: int | None = None, cuda_graph: bool = False,
                data_transfers: bool = True, batches: tuple[int, ...] = (1,), hw: tuple[int, int] = (224, 224),
                cache_dir: str | os.PathLike | None = None, trt_plugins: tuple[str, ...] = ()) -> Target:
    """Build (not activate) the adapter for ``spec``; ``artifact`` is what :func:`make_runner` takes for it."""
    from ncis_deploy.runners import make_runner

    kw = dict(cuda_graph=cuda_graph and spec.on_gpu, data_transfers=data_transfers or not spec.on_gpu)
    if spec.backend == "torch":
        runner = make_runner("torch", artifact, device=spec.device)
        return (TorchCudaTarget if spec.on_gpu else HostTarget)(spec, runner, **kw)
    if spec.backend == "onnxruntime":
        if spec.device == "cpu":
            return HostTarget(spec, make_runner("onnxruntime", artifact, providers="cpu", threads=threads), **kw)
        opts: dict = {}
        if spec.device == "cuda":
            providers = [("CUDAExecutionProvider", {"enable_cuda_graph": "1"} if cuda_graph else {}),
                         "CPUExecutionProvider"]
        else:
            providers = [("TensorrtExecutionProvider", {"trt_cuda_graph_enable": "True"} if cuda_graph else {}),
                         "CUDAExecutionProvider", "CPUExecutionProvider"]
            h, w = hw
            opts = {"trt_cache_dir": Path(cache_dir or tempfile.gettempdir()) / "ncis-bench-trt-ep",
                    "trt_profile": ((min(batches), 3, h, w), (max(batches), 3, h, w), (max(batches), 3, h, w))}
        runner = make_runner("onnxruntime", artifact, providers=providers, threads=threads, io_binding=True, **opts)
        return OrtGpuTarget(spec, runner, **kw)
    if spec.backend == "openvino":
        runner = make_runner("openvino", artifact, precision=OPENVINO_PRECISION[spec.precision], threads=threads)
        return HostTarget(spec, runner, **kw)
    if spec.backend == "tensorrt":
        return TensorRTTarget(spec, make_runner("tensorrt", artifact, use_cuda_graph=cuda_graph,
                                                    plugin_libraries=trt_plugins), **kw)
    raise UserError(f"unknown backend {spec.backend!r}")  # parse_backend catches this first
