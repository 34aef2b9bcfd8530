"""Throughput of the exported purifier on ONNX Runtime CPU vs the PyTorch eager purifier, measured in one run.

    python benchmarks/ort_vs_torch_cpu.py [--preset ncis] [--size 224] [--batches 1 8] [--seconds 10]

The figure is the ratio (these machines are noisy; absolute numbers move, a ratio measured in one run much less).
Writes benchmarks/results/ort_vs_torch_cpu.json with the machine description.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_card import machine  # noqa: E402

import ncis_deploy  # noqa: E402
from ncis_deploy import load_purifier  # noqa: E402
from ncis_deploy.exporters.onnx import build_onnx  # noqa: E402
from ncis_deploy.runners import make_runner  # noqa: E402
from ncis_deploy.fileio import write_json  # noqa: E402


def timeit(fn, seconds: float, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="ncis")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per backend and batch")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ort_vs_torch_cpu.json")
    args = ap.parse_args()

    purifier = load_purifier(args.preset)
    model = build_onnx(purifier, args.size, args.size, version=ncis_deploy.__version__).SerializeToString()
    ort_runner = make_runner("onnxruntime", model).activate()
    rows = []
    for b in args.batches:
        x = np.random.default_rng(0).random((b, 3, args.size, args.size), dtype=np.float32)
        xt = torch.from_numpy(x)
        backends = {
            "pytorch-eager": lambda: purifier(xt),
            "onnxruntime-cpu": lambda: ort_runner.infer_impl(x),  # unchecked, as torch is
        }
        res = {}
        with torch.inference_mode():
            # interleave the two backends in rounds so drift on a shared machine hits both alike
            for _ in range(3):
                for name, fn in backends.items():
                    res.setdefault(name, []).extend(timeit(fn, args.seconds / 3))
        row = {"batch": b, "size": args.size}
        for name, ts in res.items():
            med = statistics.median(ts)
            row[name] = {"median_ms": med * 1e3, "p90_ms": float(np.percentile(ts, 90)) * 1e3, "iterations": len(ts),
                         "images_per_s": b / med}
        row["ratio_ort_over_torch"] = row["onnxruntime-cpu"]["images_per_s"] / row["pytorch-eager"]["images_per_s"]
        rows.append(row)
        print(f"batch {b}: torch {row['pytorch-eager']['median_ms']:.1f} ms, ORT {row['onnxruntime-cpu']['median_ms']:.1f} ms"
              f" -> ORT/torch throughput {row['ratio_ort_over_torch']:.2f}x", flush=True)
    write_json(args.out, {"benchmark": "exported purifier: ONNX Runtime CPU vs PyTorch eager CPU, one run",
                          "preset": args.preset, "config": purifier.config, "results": rows,
                          "torch_threads": torch.get_num_threads(), "machine": machine(),
                          "onnxruntime": __import__("onnxruntime").__version__})


if __name__ == "__main__":
    main()
