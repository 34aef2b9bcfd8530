"""One backend's ratio to ORT FP32 across independent `ncis-deploy bench` runs: how much of a ratio is noise.

    python benchmarks/repeat_bench.py [--export DIR] [--backend openvino:bf16] [--runs 9] [--batches 1 8]
                                      [--duration 6] [--target 3] [--out FILE]

A ratio measured interleaved in one run is free of the load that changes during the run, but not of what differs
between runs: each process gets its own allocations, thread placement and caches, and ONNX Runtime's FP32 time on
the ``ncis`` purifier moves by 10-20 % from one process to the next on these 2-core machines. So this runs
``ncis-deploy bench EXPORT --backend B --vs onnxruntime:cpu`` ``--runs`` times, each a fresh process, and records
every run's ratio per batch (bench's: median throughput over median throughput, and the median of the paired
per-round ratios), both backends' medians, and per batch the spread: min, median, max and the share of runs at or
above ``--target``.

Without ``--export``, the ``ncis`` preset is exported once at 224² into a temporary folder. Writes ``--out``
(default benchmarks/results/repeat-bench.json) with the CPU model and ISA flags.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ncis_deploy import cpu
from ncis_deploy.fileio import write_json

RESULT = Path(__file__).parent / "results" / "repeat-bench.json"
REF = "onnxruntime:cpu"


def bench_once(export: Path, backend: str, batches: list[int], duration: float, out: Path) -> dict:
    cmd = [sys.executable, "-m", "ncis_deploy.cli", "bench", str(export), "--backend", backend, "--vs", REF,
           "--duration", str(duration), "--no-diffpure", "--json", str(out)]
    for b in batches:
        cmd += ["--batch", str(b)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"repeat_bench.py: {' '.join(cmd)} failed (exit {done.returncode}):\n{done.stderr}")
    report = json.loads(out.read_text())
    medians = {(r["label"], r["batch"]): r["latency_ms"]["median"] for r in report["results"]}
    run = {"load_average": report["machine"]["load_average"], "batches": {}}
    for c in report["comparisons"]:
        run["batches"][str(c["batch"])] = {
            "ratio": round(c["ratio"], 3), "paired_median": round(c["paired"]["median"], 3),
            "ms_median": round(medians[(c["backend"], c["batch"])], 2),
            "ms_median_vs": round(medians[(c["vs"], c["batch"])], 2), "rounds": c["rounds"]}
        run["backend"] = c["backend"]
    return run


def spread(values: list[float], target: float) -> dict:
    return {"min": min(values), "median": round(statistics.median(values), 3), "max": max(values),
            "share_at_or_above_target": round(sum(v >= target for v in values) / len(values), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, default=None, help="an export directory (default: export ncis at 224²)")
    ap.add_argument("--backend", default="openvino:bf16")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--duration", type=float, default=6.0, help="bench --duration of each run")
    ap.add_argument("--target", type=float, default=3.0, help="the ratio to count runs against")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        export = args.export
        if export is None:
            export = Path(tmp) / "ncis_export"
            print("exporting ncis at 224x224 ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "ncis_deploy.cli", "export", "--out", str(export)], check=True,
                           capture_output=True)
        runs = []
        for i in range(args.runs):
            runs.append(bench_once(export, args.backend, args.batches, args.duration, Path(tmp) / f"run{i}.json"))
            print(f"run {i + 1}/{args.runs}: " + ", ".join(
                f"batch {b} {v['ratio']:.2f}x (paired {v['paired_median']:.2f}x; {v['ms_median']:.1f} vs "
                f"{v['ms_median_vs']:.1f} ms)" for b, v in runs[-1]["batches"].items()), file=sys.stderr)
    per_batch = {str(b): {key: spread([r["batches"][str(b)][key] for r in runs], args.target)
                          for key in ("ratio", "paired_median")} for b in args.batches}
    for b, s in per_batch.items():
        print(f"batch {b}: ratio min {s['ratio']['min']:.2f} median {s['ratio']['median']:.2f} max "
              f"{s['ratio']['max']:.2f}, {s['ratio']['share_at_or_above_target']:.0%} of runs >= {args.target}x")
    write_json(args.out, {"machine": cpu.cpu_record(), "backend": runs[0]["backend"], "vs": REF,
                          "export": str(args.export) if args.export else "ncis at 224x224, exported by this script",
                          "duration_s": args.duration, "target": args.target, "spread": per_batch, "runs": runs,
                          "method": "each run a fresh `ncis-deploy bench --vs onnxruntime:cpu` process; ratio = "
                                    "bench's median-throughput ratio, paired_median = median of per-round ratios"})
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
