"""The one-launch CUDA Gaussian smoothing kernel, compiled at run time: no CUDA build of anything of ours.

The source ships inside the package (``ncis_deploy/csrc/gaussian_smooth.cu`` + ``.cuh``: the canonical copy, also
used by the TensorRT plugin under ``kernels/``). On the first call per GPU it is compiled with NVRTC for that GPU's
architecture, through cuda-python (``pip install 'ncis-deploy[gpu]' nvidia-cuda-nvrtc``) or, if that is missing,
CuPy, then loaded once and cached. Launches go on PyTorch's current stream, so the kernel orders with the
surrounding torch work like any torch op.

:func:`gaussian_smooth_cuda` computes exactly what :func:`ncis_deploy.model.smoothing.smooth_iterative` computes
(float accumulation; float32 or float16 tensors). It has no backward: autograd users keep the matmul form (the GS
stage picks it automatically, see ``GaussianSmoothing(backend="auto")``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import threading
from importlib import resources
from pathlib import Path

from ncis_deploy.errors import UserError

log = logging.getLogger(__name__)

SOURCE_NAME = "gaussian_smooth.cu"
INSTALL_HINT = "pip install cuda-python nvidia-cuda-nvrtc (or: pip install cupy-cuda12x / cupy-cuda13x)"

# Mirrors of gaussian_smooth.cuh (kTileH, kTileW, kThreads, kSmemBudget, kMaxRadius). A CPU test runs the C plan
# (kernels/tests/emulate.cu `plan`) and checks that plan() below agrees, so a change there cannot go unnoticed here.
TILE_H, TILE_W, THREADS, SMEM_BUDGET, MAX_RADIUS = 32, 64, 256, 48 * 1024, 15
SPECIALISED_RADII = (1, 2, 3)  # kernels ncis_gs_<dtype>_r1..r3; everything else runs ncis_gs_<dtype>_r0


def source_dir() -> Path:
    """Directory holding gaussian_smooth.{h,cuh,cu} (inside the installed package)."""
    return Path(str(resources.files("ncis_deploy") / "csrc"))


def kernel_source() -> str:
    return (source_dir() / SOURCE_NAME).read_text()


# ------------------------------------------------------------------------------------------------------- the plan
def smem_bytes(halo: int, radius: int) -> int:
    stride = (TILE_W + 2 * halo) | 1
    return (2 * (TILE_H + 2 * halo) * stride + radius + 1) * 4


def plan(radius: int, iterations: int) -> list[int]:
    """Iterations per kernel launch (as ncis_gs::plan): [] for 0 iterations; UserError if the radius cannot fit."""
    if iterations <= 0:
        return []
    if radius > MAX_RADIUS or smem_bytes(radius, radius) > SMEM_BUDGET:
        raise UserError(f"the CUDA smoothing kernel supports kernel_size <= {2 * MAX_RADIUS + 1}, got {2 * radius + 1}; "
                        "use the matmul backend for wider kernels")
    t_max = 1
    while t_max < iterations and smem_bytes((t_max + 1) * radius, radius) <= SMEM_BUDGET:
        t_max += 1
    launches = -(-iterations // t_max)
    return [iterations // launches + (1 if i < iterations % launches else 0) for i in range(launches)]


def kernel_name(dtype: str, radius: int) -> str:
    """``dtype``: "f32" or "f16"."""
    return f"ncis_gs_{dtype}_r{radius if radius in SPECIALISED_RADII else 0}"


KERNEL_NAMES = tuple(kernel_name(d, r) for d in ("f32", "f16") for r in (0, *SPECIALISED_RADII))


def compile_options(arch: str | None) -> list[str]:
    """NVRTC options: C++17, the include path of the .cuh, a target like "sm_90" or "compute_90" (None: leave it to
    the caller, as CuPy does). No fast math: the taps use exp() in double, like smoothing.gaussian_kernel1d."""
    return ["--std=c++17", f"--include-path={source_dir()}"] + ([f"--gpu-architecture={arch}"] if arch else [])


# ------------------------------------------------------------------------------------------------ cuda-python path
def _cuda_python():
    """(nvrtc, driver) modules of cuda-python, new layout first (cuda.bindings, 12.6+), else the old one."""
    try:
        from cuda.bindings import driver, nvrtc
    except ImportError:
        from cuda import cuda as driver, nvrtc  # noqa: F401  (cuda-python < 12.6)
    return nvrtc, driver


def _check(result, what: str):
    """cuda-python returns (status, *values); raise a UserError naming the call when status is not success."""
    status, *values = result if isinstance(result, tuple) else (result,)
    if int(status) != 0:
        raise UserError(f"CUDA smoothing kernel: {what} failed ({status!r}); {INSTALL_HINT}")
    return values[0] if len(values) == 1 else values


def compile_program(arch: str) -> bytes:
    """Compile gaussian_smooth.cu with NVRTC (cuda-python) to a cubin ("sm_XY") or PTX ("compute_XY").

    Needs no GPU: gpu_check.sh and kernels/README.md's manual check use it to prove the source compiles under NVRTC.
    """
    try:
        nvrtc, _ = _cuda_python()
    except ImportError:
        raise UserError(f"cuda-python is not installed; {INSTALL_HINT}") from None
    try:
        prog = _check(nvrtc.nvrtcCreateProgram(kernel_source().encode(), SOURCE_NAME.encode(), 0, [], []),
                      "nvrtcCreateProgram")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  (libnvrtc missing surfaces as a loader error, not a status)
        raise UserError(f"NVRTC is not usable ({str(e).splitlines()[0]}); {INSTALL_HINT}") from None
    opts = [o.encode() for o in compile_options(arch)]
    try:
        (status,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if int(status) != 0:
            size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            buf = b" " * size
            _check(nvrtc.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
            raise UserError(f"NVRTC could not compile {SOURCE_NAME} for {arch}: {buf.decode(errors='replace').strip()}")
        cubin = arch.startswith("sm_")
        getsize, get = (nvrtc.nvrtcGetCUBINSize, nvrtc.nvrtcGetCUBIN) if cubin else (nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX)
        size = _check(getsize(prog), "nvrtcGet(CUBIN|PTX)Size")
        image = b" " * size
        _check(get(prog, image), "nvrtcGet(CUBIN|PTX)")
        return image
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


class _DriverModule:
    """The compiled module on one device, through the CUDA driver API (cuda-python)."""

    backend = "cuda-python"

    def __init__(self, device: int, capability: tuple[int, int]):
        _, self.driver = _cuda_python()
        d = self.driver
        _check(d.cuInit(0), "cuInit")
        dev = _check(d.cuDeviceGet(device), "cuDeviceGet")
        self.ctx = _check(d.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")  # the context torch uses
        _check(d.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")
        arch = f"{capability[0]}{capability[1]}"
        try:
            image = compile_program(f"sm_{arch}")
        except UserError:  # an NVRTC older than the GPU: PTX for the newest target it knows, JIT-compiled by the driver
            image = compile_program(f"compute_{arch}")
        self.module = _check(d.cuModuleLoadData(image), "cuModuleLoadData")
        self.functions = {n: _check(d.cuModuleGetFunction(self.module, n.encode()), f"cuModuleGetFunction({n})")
                          for n in KERNEL_NAMES}

    def launch(self, name: str, grid: int, smem: int, stream: int, args: list) -> None:
        d = self.driver
        _check(d.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")
        # kernelParams as a raw void** (an int): the form every cuda-python version accepts
        holders = [ctypes.c_void_p(a[1]) if a[0] == "p" else ctypes.c_int(a[1]) if a[0] == "i" else ctypes.c_double(a[1])
                   for a in args]
        params = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        _check(d.cuLaunchKernel(self.functions[name], grid, 1, 1, THREADS, 1, 1, smem, d.CUstream(stream),
                                ctypes.addressof(params), 0), f"cuLaunchKernel({name})")


class _CupyModule:
    """The same through CuPy's RawModule (its own NVRTC and on-disk cache), when cuda-python is missing."""

    backend = "cupy"

    def __init__(self, device: int, capability: tuple[int, int]):
        import cupy

        self.cupy = cupy
        self.device = device
        with cupy.cuda.Device(device):
            opts = tuple(compile_options(None))  # CuPy adds the device's architecture itself
            self.module = cupy.RawModule(code=kernel_source(), options=opts, name_expressions=None)
            self.functions = {n: self.module.get_function(n) for n in KERNEL_NAMES}

    def launch(self, name: str, grid: int, smem: int, stream: int, args: list) -> None:
        import numpy as np

        cp = self.cupy
        conv = {"p": np.uint64, "i": np.int32, "d": np.float64}
        with cp.cuda.Device(self.device), cp.cuda.ExternalStream(stream):
            self.functions[name]((grid,), (THREADS,), tuple(conv[k](v) for k, v in args), shared_mem=smem)


_LOCK = threading.Lock()
_MODULES: dict[int, object] = {}


def _module(device: int):
    """The loaded module for ``device``, compiled on first use (thread-safe, once per process and device)."""
    with _LOCK:
        if device not in _MODULES:
            import torch

            cap = torch.cuda.get_device_capability(device)
            errors = []
            for cls in (_DriverModule, _CupyModule):
                try:
                    _MODULES[device] = cls(device, cap)
                    break
                except ImportError as e:
                    errors.append(f"{cls.backend}: not installed ({e.name or e})")
                except UserError as e:
                    errors.append(f"{cls.backend}: {e}")
            else:
                raise UserError("the CUDA smoothing kernel could not be loaded: " + "; ".join(errors)
                                + f". Install a runtime compiler: {INSTALL_HINT}")
        return _MODULES[device]


@functools.lru_cache(maxsize=1)
def status() -> tuple[bool, str]:
    """Cheap check (no compile): a CUDA GPU and a binding (cuda-python or CuPy) importable. Never raises; cached,
    since the GS stage's "auto" backend asks on every forward."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible to PyTorch"
    for mod, name in (("cuda.bindings", "cuda-python"), ("cuda", "cuda-python"), ("cupy", "CuPy")):
        try:
            if importlib.util.find_spec(mod) is not None:
                return True, f"{name} found"
        except (ImportError, ValueError):
            continue
    return False, f"neither cuda-python nor CuPy is installed ({INSTALL_HINT})"


def gaussian_smooth_cuda(x, kernel_size: int, sigma: float, iterations: int, out=None):
    """``iterations`` reflect-padded Gaussian smoothings of a CUDA tensor [N, C, H, W] (float32 or float16), one
    kernel launch (more only when iterations * radius exceeds one launch's shared memory), on the current stream.

    ``out``: an optional contiguous tensor of x's shape, dtype and device to write into (not overlapping x); the GPU
    check passes a NaN-poisoned one to prove every element is written.
    """
    import torch

    # the checks of smoothing.gaussian_kernel1d, restated: the GS stage imports this module, not the other way round
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise UserError(f"GS kernel_size must be a positive odd integer, got {kernel_size}")
    if not sigma > 0 or not math.isfinite(sigma):
        raise UserError(f"GS sigma must be a positive number, got {sigma}")
    if iterations < 0:
        raise UserError(f"GS iterations must be >= 0, got {iterations}")
    if not isinstance(x, torch.Tensor) or not x.is_cuda:
        raise UserError("the CUDA smoothing kernel needs a CUDA tensor; use the matmul backend on the CPU")
    if x.dim() != 4:
        raise UserError(f"the CUDA smoothing kernel needs [N, C, H, W], got shape {list(x.shape)}")
    dtype = {torch.float32: "f32", torch.float16: "f16"}.get(x.dtype)
    if dtype is None:
        raise UserError(f"the CUDA smoothing kernel takes float32 or float16, got {x.dtype}")
    if torch.is_grad_enabled() and x.requires_grad:
        raise UserError("the CUDA smoothing kernel has no backward; run it under torch.no_grad() or use "
                        "GaussianSmoothing(backend='matmul') (backend='auto' does this for you)")
    n, c, h, w = x.shape
    if h < 2 or w < 2:
        raise UserError(f"Gaussian smoothing needs every spatial size >= 2 (reflection of a single pixel is undefined), "
                        f"got {h}x{w}")
    radius = kernel_size // 2
    launches = plan(radius, iterations)
    x = x.contiguous()
    if not launches or x.numel() == 0:
        return x.clone() if out is None else out.copy_(x)
    if n * c > 2**31 - 1:
        raise UserError(f"N*C = {n * c} is too large for the CUDA smoothing kernel (int32)")
    device = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype or out.device != x.device
                            or not out.is_contiguous() or out.data_ptr() == x.data_ptr()):
        raise UserError("out= must be a contiguous tensor of the input's shape, dtype and device, distinct from it")
    with torch.cuda.device(device):
        mod = _module(device)
        out = torch.empty_like(x) if out is None else out
        work = torch.empty_like(x) if len(launches) > 1 else None  # ping-pong: the last launch writes `out`
        stream = torch.cuda.current_stream(device).cuda_stream
        tiles = n * c * -(-h // TILE_H) * -(-w // TILE_W)
        grid = min(tiles, 2**31 - 1)
        src = x
        for i, t in enumerate(launches):
            dst = out if (len(launches) - 1 - i) % 2 == 0 else work
            args = [("p", src.data_ptr()), ("p", dst.data_ptr()), ("i", n * c), ("i", h), ("i", w), ("i", radius),
                    ("d", float(sigma)), ("i", t)]
            mod.launch(kernel_name(dtype, radius), grid, smem_bytes(t * radius, radius), stream, args)
            src = dst
    return out


def use_cuda_kernels(purifier, backend: str = "auto"):
    """Switch every GS stage of a purifier to ``backend`` ("auto": the kernel on CUDA tensors without grad)."""
    for stage in getattr(purifier, "gs", []):
        stage.set_backend(backend)
    return purifier
