"""Two ONNX graphs of the same purifier, A against B, on every CPU runtime here, interleaved in one run.

    python benchmarks/graph_ab.py A.onnx B.onnx [--labels old new] [--rounds 20] [--out FILE]

For a change to the exported graph's *form* (the same function, other ops): each round runs A and B on ONNX Runtime
FP32, OpenVINO f32 and, where the CPU has BF16 natively, OpenVINO bf16 as the openvino runner runs it (the BSN typed
bf16), at batch 1, order alternating; the figure per runtime is the median over rounds of A's time / B's time in the
same round (> 1: B is faster), ORT's thread pools not spinning. The two graphs' outputs on the hold-out photos
(ORT FP32) are compared too: a form change must not change the numbers. Both inputs need the same fixed size.

Writes ``--out`` (default benchmarks/results/graph-ab.json) with the CPU model and ISA flags.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import numpy as np
import onnx
from int8_cpu import measure, ort_backend  # benchmarks/ is the script's directory

from ncis_deploy import cpu
from ncis_deploy.errors import UserError
from ncis_deploy.exporters import quantize
from ncis_deploy.exporters.pipeline import versions
from ncis_deploy.fileio import write_json
from ncis_deploy.runners.openvino import StaticShapes, import_openvino, prepare_bf16

RESULT = Path(__file__).parent / "results" / "graph-ab.json"


def _shape(path: Path) -> list[int]:
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value for d in dims]


def openvino_backend(path: Path, precision: str, threads: int):
    ov = import_openvino()
    core = ov.Core()
    model = core.read_model(str(path))
    hint = "f32" if precision == "f32" else prepare_bf16(model)[1]  # bf16 as the runner runs it
    cfg = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    return StaticShapes(core, model, cfg).infer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--labels", nargs=2, default=["A", "B"], metavar=("A", "B"))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    shape = _shape(args.a)
    if shape[2:] != _shape(args.b)[2:] or 0 in shape[2:]:
        raise SystemExit(f"graph_ab.py: {args.a} and {args.b} need the same fixed height and width")
    h, w = shape[2:]
    runtimes = {"onnxruntime fp32": lambda p: ort_backend(p, args.threads)}
    try:
        import_openvino()
        runtimes["openvino f32"] = lambda p: openvino_backend(p, "f32", args.threads)
        if "bf16" in cpu.native_precisions():
            runtimes["openvino bf16"] = lambda p: openvino_backend(p, "bf16", args.threads)
    except UserError as e:  # openvino is not installed: the ORT row still runs
        print(f"OpenVINO rows skipped: {e}")
    backends = {(rt, side): make(path) for rt, make in runtimes.items()
                for side, path in (("a", args.a), ("b", args.b))}
    cases = quantize.holdout_cases(h, w)
    outs = {side: np.concatenate([backends[("onnxruntime fp32", side)](x) for _, x in cases]) for side in "ab"}
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    load = os.getloadavg()[0]
    times = measure(backends, x, args.rounds)
    rows = []
    for rt in runtimes:
        ta, tb = times[(rt, "a")], times[(rt, "b")]
        rows.append({"runtime": rt, f"ms_{args.labels[0]}": round(1e3 * statistics.median(ta), 2),
                     f"ms_{args.labels[1]}": round(1e3 * statistics.median(tb), 2),
                     "speedup": round(statistics.median([a / b for a, b in zip(ta, tb)]), 3)})
        print(f"{rt:18s} {args.labels[0]} {rows[-1][f'ms_{args.labels[0]}']:7.2f} ms  {args.labels[1]} "
              f"{rows[-1][f'ms_{args.labels[1]}']:7.2f} ms  x{rows[-1]['speedup']:.3f}")
    diff = float(np.abs(outs["a"] - outs["b"]).max())
    print(f"largest output difference on the hold-out photos (ORT FP32): {diff:.3g}")
    write_json(args.out, {
        "machine": cpu.cpu_record(), "load_average_1min": [load, os.getloadavg()[0]], "versions": versions(),
        "graphs": {args.labels[0]: str(args.a), args.labels[1]: str(args.b)}, "input": [1, 3, h, w],
        "threads": args.threads, "rounds": args.rounds, "results": rows,
        "max_abs_output_difference_holdout": diff,
        "method": f"interleaved rounds, order alternating; speedup = median over rounds of {args.labels[0]}'s "
                  f"time / {args.labels[1]}'s in the same round; ORT thread pools not spinning; OpenVINO bf16 as "
                  "the openvino runner (BSN typed bf16, f32 hint), compiled for the static shape"})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
