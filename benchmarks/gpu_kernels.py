"""GPU check of the one-launch Gaussian smoothing kernel: correctness, then speed. Run by benchmarks/gpu_check.sh.

Correctness (fails the run, exit 1): fresh random inputs for every case (never zeros), odd and tiny sizes, every
radius specialisation and the generic path, chunked plans, float32 (max abs error <= 1e-5 against the float64
PyTorch reference ``smooth_iterative``) and float16 (<= 1e-3), outputs poisoned with NaN before each run (NaN never
passes: the comparison is ``err <= tol``), through both bindings: NVRTC (``ncis_deploy.kernels``) and the C launcher
``ncis_gaussian_smooth`` (the code path of the TensorRT plugin), built by gpu_check.sh with nvcc.

Speed (recorded; the issue's goals are reported, not enforced): CUDA-event timings, warm-up first, median of many,
inputs rotated over enough buffers to overflow L2, against T iterations of PyTorch's reflect-pad + depthwise conv2d
(``smooth_iterative``) and the fused matmul form, for T in {1, 3, 10}, batch {1, 64}, 224² and 512², kernel 3; and
the device's copy bandwidth (a large device-to-device copy, bytes read + written), measured in the same run.
Method: check correctness before timing; time with CUDA events after warm-up, inputs rotated past L2; report the
copy bandwidth measured in the same run beside every kernel time.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

GOAL_FRACTION_OF_COPY = 0.8  # issue 4: >= 80 % of the measured copy bandwidth at batch 64, 224², T = 10
GOAL_SPEEDUP_VS_CONV = 5.0   # ... and >= 5x faster than T iterations of torch conv2d there
F32_TOL, F16_TOL = 1e-5, 1e-3

SHAPES = [(1, 1, 2, 2), (1, 3, 5, 7), (2, 3, 37, 91), (1, 3, 224, 224), (3, 3, 97, 131), (2, 1, 513, 257),
          (1, 3, 2, 300), (1, 2, 65, 2), (64, 3, 224, 224)]
# (kernel_size, iterations): the specialised radii 1..3 (k 3, 5, 7), the generic path (k 1, 9, 13, 31), plans of
# one launch and of several (k 5 with T 10, k 13 with T 5, k 31 with T 2 need more than one launch), and T = 0
CONFIGS = [(3, 0), (3, 1), (3, 3), (3, 10), (5, 1), (5, 3), (5, 10), (7, 3), (1, 4), (9, 2), (13, 5), (31, 2)]
TIMING = [(b, s, t) for b in (1, 64) for s in (224, 512) for t in (1, 3, 10)]


# ------------------------------------------------------------------------------------------ pure helpers (CPU-tested)
def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (the results file name)."""
    out = "".join(c.lower() if c.isalnum() else "-" for c in name)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "unknown-gpu"


def summarize_ms(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"median_ms": statistics.median(s), "min_ms": s[0], "p90_ms": s[min(len(s) - 1, int(0.9 * len(s)))],
            "reps": len(s)}


def goals(timings: list[dict], copy_gbps: float) -> dict:
    """The issue's two goals at batch 64, 224², T = 10, float32 (None where that timing is missing)."""
    row = next((r for r in timings if r["batch"] == 64 and r["size"] == 224 and r["iterations"] == 10
                and r["dtype"] == "float32"), None)
    if row is None or not copy_gbps:
        return {"fraction_of_copy_bw": None, "speedup_vs_conv2d": None, "met": None}
    frac = row["kernel_gbps"] / copy_gbps
    speed = row["speedup_vs_conv2d"]
    return {"at": "batch 64, 3x224x224, T=10, kernel 3, float32", "fraction_of_copy_bw": frac,
            "goal_fraction": GOAL_FRACTION_OF_COPY, "speedup_vs_conv2d": speed, "goal_speedup": GOAL_SPEEDUP_VS_CONV,
            "met": bool(frac >= GOAL_FRACTION_OF_COPY and speed >= GOAL_SPEEDUP_VS_CONV)}


def render_table(result: dict) -> str:
    c = result["correctness"]
    lines = [f"device: {result['device']['name']} (sm_{result['device']['capability']}), "
             f"copy bandwidth {result['copy_bandwidth_gbps']:.0f} GB/s (read + write)",
             f"correctness: {c['cases']} cases, {len(c['failures'])} failures; max abs error float32 "
             f"{c['max_err_float32']:.2e} (tol {F32_TOL:g}), float16 {c['max_err_float16']:.2e} (tol {F16_TOL:g})",
             "", f"{'batch':>5} {'size':>5} {'T':>3} {'dtype':>8} {'kernel ms':>10} {'GB/s':>7} {'% copy':>7} "
             f"{'conv2d ms':>10} {'x conv':>7} {'matmul ms':>10}"]
    for r in result["timings"]:
        lines.append(f"{r['batch']:>5} {r['size']:>5} {r['iterations']:>3} {r['dtype']:>8} {r['kernel_ms']:>10.4f} "
                     f"{r['kernel_gbps']:>7.0f} {100 * r['kernel_gbps'] / result['copy_bandwidth_gbps']:>6.1f}% "
                     f"{r['conv2d_ms']:>10.4f} {r['speedup_vs_conv2d']:>7.1f} {r['matmul_ms']:>10.4f}")
    g = result["goals"]
    if g.get("met") is not None:
        lines += ["", f"goals at {g['at']}: {100 * g['fraction_of_copy_bw']:.1f}% of copy bandwidth "
                      f"(goal {100 * g['goal_fraction']:.0f}%), {g['speedup_vs_conv2d']:.1f}x conv2d "
                      f"(goal {g['goal_speedup']:.0f}x): {'MET' if g['met'] else 'NOT MET'}"]
    lines.append(f"RESULT: {'PASS' if not c['failures'] else 'FAIL'} (correctness)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- GPU parts
class Launcher:
    """ctypes binding of gaussian_smooth.h's C API in a shared library built by nvcc (gpu_check.sh)."""

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        lib.ncis_gaussian_smooth.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong,
                                             ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_double, ctypes.c_int,
                                             ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        lib.ncis_gaussian_smooth.restype = ctypes.c_int
        lib.ncis_gaussian_smooth_workspace.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_int, ctypes.c_int,
                                                       ctypes.c_int, ctypes.c_int]
        lib.ncis_gaussian_smooth_workspace.restype = ctypes.c_size_t
        lib.ncis_gaussian_smooth_status_string.argtypes = [ctypes.c_int]
        lib.ncis_gaussian_smooth_status_string.restype = ctypes.c_char_p
        self.lib = lib

    def __call__(self, x, k, sigma, t, out):
        import torch

        n, c, h, w = x.shape
        dtype = 1 if x.dtype == torch.float16 else 0
        need = self.lib.ncis_gaussian_smooth_workspace(dtype, n * c, h, w, k, t)
        work = torch.empty(need, dtype=torch.uint8, device=x.device) if need else None
        status = self.lib.ncis_gaussian_smooth(x.data_ptr(), out.data_ptr(), dtype, n * c, h, w, k, sigma, t,
                                               work.data_ptr() if work is not None else None, need,
                                               torch.cuda.current_stream().cuda_stream)
        if status != 0:
            raise RuntimeError(f"ncis_gaussian_smooth: {self.lib.ncis_gaussian_smooth_status_string(status).decode()}")
        return out


def check_correctness(launcher: Launcher | None, quick: bool) -> dict:
    import torch

    from ncis_deploy.kernels import gaussian_smooth_cuda
    from ncis_deploy.model.smoothing import GaussianSmoothing, smooth_iterative

    paths = {"nvrtc": lambda x, k, s, t, out: gaussian_smooth_cuda(x, k, s, t, out=out)}
    if launcher is not None:
        paths["c-launcher"] = launcher
    shapes = SHAPES[:-1] if quick else SHAPES
    failures, worst, cases, seed = [], {"float32": 0.0, "float16": 0.0}, 0, 0
    stream = torch.cuda.Stream()  # not the default stream: the kernel must honour the caller's stream
    for shape in shapes:
        for k, t in CONFIGS:
            for dtype, tol in ((torch.float32, F32_TOL), (torch.float16, F16_TOL)):
                seed += 1
                g = torch.Generator(device="cuda").manual_seed(seed)  # fresh data for every case
                x = torch.rand(shape, generator=g, device="cuda").to(dtype)
                sigma = 0.5 + 1.5 * torch.rand(1, generator=g, device="cuda").item()
                ref = smooth_iterative(x.double(), k, sigma, t)
                for name, fn in paths.items():
                    out = torch.full_like(x, float("nan"))  # poisoned: an unwritten element stays NaN and fails
                    with torch.cuda.stream(stream):
                        fn(x, k, sigma, t, out)
                    stream.synchronize()
                    err = (out.double() - ref).abs().max().item()
                    rel = ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
                    cases += 1
                    key = str(dtype).replace("torch.", "")
                    worst[key] = max(worst[key], err) if err == err else float("nan")
                    if not err <= tol:
                        failures.append({"path": name, "shape": list(shape), "kernel_size": k, "iterations": t,
                                         "sigma": sigma, "dtype": key, "max_abs": err, "rel_l2": rel})
    # the GS stage's "auto" backend uses the kernel for CUDA tensors without grad and matches the matmul form
    x = torch.rand(2, 3, 45, 67, device="cuda")
    auto = GaussianSmoothing(3, 1.0, 5, backend="auto")
    with torch.no_grad():
        err = (auto(x) - GaussianSmoothing(3, 1.0, 5)(x)).abs().max().item()
    cases += 1
    if not err <= F32_TOL:
        failures.append({"path": "GaussianSmoothing(backend='auto')", "max_abs": err})
    return {"cases": cases, "failures": failures, "max_err_float32": worst["float32"],
            "max_err_float16": worst["float16"], "tolerances": {"float32": F32_TOL, "float16": F16_TOL},
            "reference": "smooth_iterative in float64 on the GPU"}


def time_events(fn, n_sets: int, warmup: int, reps: int) -> dict:
    import torch

    for i in range(warmup):
        fn(i % n_sets)
    torch.cuda.synchronize()
    events = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i % n_sets)
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return summarize_ms([s.elapsed_time(e) for s, e in events])


def copy_bandwidth(reps: int) -> dict:
    import torch

    free, _ = torch.cuda.mem_get_info()
    n = int(min(1 << 30, free // 4) // 4)  # up to 1 GiB per buffer
    src = torch.rand(n, device="cuda")
    dst = torch.empty_like(src)
    t = time_events(lambda i: dst.copy_(src), 1, 5, reps)
    return {"bytes_per_copy": 2 * n * 4, "gbps": 2 * n * 4 / (t["median_ms"] * 1e-3) / 1e9, **t}


def time_all(quick: bool, reps: int) -> list[dict]:
    import torch

    from ncis_deploy.kernels import gaussian_smooth_cuda
    from ncis_deploy.model.smoothing import smooth_fused, smooth_iterative

    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 64 << 20)
    rows = []
    todo = TIMING + [(64, 224, 10, "float16")]
    for item in (todo[:3] + todo[-1:]) if quick else todo:
        b, s, t = item[:3]
        dtype = torch.float16 if len(item) > 3 else torch.float32
        bytes_one = b * 3 * s * s * dtype.itemsize
        n_sets = max(1, min(256, math.ceil(3 * l2 / bytes_one), int(torch.cuda.mem_get_info()[0] * 0.3 // (2 * bytes_one))))
        xs = [torch.rand(b, 3, s, s, device="cuda").to(dtype) for _ in range(n_sets)]
        outs = [torch.empty_like(x) for x in xs]
        kern = time_events(lambda i: gaussian_smooth_cuda(xs[i], 3, 1.0, t, out=outs[i]), n_sets, 10, reps)
        conv = time_events(lambda i: smooth_iterative(xs[i], 3, 1.0, t), n_sets, 3, max(10, reps // 5))
        mm = time_events(lambda i: smooth_fused(xs[i], 3, 1.0, t), n_sets, 3, max(10, reps // 5))
        rows.append({"batch": b, "size": s, "iterations": t, "kernel_size": 3, "dtype": str(dtype).replace("torch.", ""),
                     "bytes_read_plus_written": 2 * bytes_one, "input_sets": n_sets,
                     "kernel_ms": kern["median_ms"], "kernel_timing": kern,
                     "kernel_gbps": 2 * bytes_one / (kern["median_ms"] * 1e-3) / 1e9,
                     "conv2d_ms": conv["median_ms"], "conv2d_timing": conv,
                     "matmul_ms": mm["median_ms"], "matmul_timing": mm,
                     "speedup_vs_conv2d": conv["median_ms"] / kern["median_ms"]})
        del xs, outs
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--launcher-lib", help="libncis_gs.so built by gpu_check.sh (C launcher); omit to skip that path")
    ap.add_argument("--out", action="append", default=[], help="directory for gpu-kernels-<device>.json (repeatable)")
    ap.add_argument("--quick", action="store_true", help="fewer cases and timings (a smoke run)")
    ap.add_argument("--reps", type=int, default=100, help="timed repetitions per kernel measurement")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("error: gpu_kernels.py needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    torch.backends.cudnn.allow_tf32 = False  # float32 references must be float32 (TF32 would blur the parity check)
    torch.backends.cuda.matmul.allow_tf32 = False
    from ncis_deploy import kernels

    props = torch.cuda.get_device_properties(0)
    cap = "".join(map(str, torch.cuda.get_device_capability(0)))
    t0 = time.perf_counter()
    kernels._module(torch.cuda.current_device())  # compile + load once (NVRTC), outside every timing
    compile_s = time.perf_counter() - t0
    launcher = Launcher(args.launcher_lib) if args.launcher_lib else None
    result = {"device": {"name": props.name, "capability": cap, "multiprocessors": props.multi_processor_count,
                         "memory_bytes": props.total_memory, "l2_bytes": getattr(props, "L2_cache_size", None)},
              "software": {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                           "binding": type(kernels._MODULES[torch.cuda.current_device()]).backend,
                           "compile_and_load_s": round(compile_s, 3), "c_launcher": bool(launcher)},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tf32": False}
    print(f"kernel loaded through {result['software']['binding']} in {compile_s:.2f} s; checking correctness ...",
          flush=True)
    result["correctness"] = check_correctness(launcher, args.quick)
    print(f"  {result['correctness']['cases']} cases, {len(result['correctness']['failures'])} failures; timing ...",
          flush=True)
    bw = copy_bandwidth(max(10, args.reps // 5))
    result["copy_bandwidth_gbps"], result["copy_bandwidth"] = bw["gbps"], bw
    result["timings"] = time_all(args.quick, args.reps)
    result["goals"] = goals(result["timings"], bw["gbps"])
    name = f"gpu-kernels-{device_slug(props.name)}.json"
    for d in args.out or ["benchmarks/results"]:
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / name).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {Path(d) / name}")
    print(render_table(result))
    return 1 if result["correctness"]["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
