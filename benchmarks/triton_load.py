"""Load test of `ncis-deploy serve` (a real tritonserver via nvidia-pytriton) on loopback.

    python benchmarks/triton_load.py [--export DIR] [--clients 1 4 16] [--seconds 20] [--protocols http grpc]

With no --export, the default purifier is exported first (ncis preset, 224x224, dynamic batch). The server runs
as a child process (`ncis-deploy serve`), the clients are threads here, each with its own tritonclient connection,
sending one image per request. Every reply is compared with ONNX Runtime in this process (tolerance 1e-5) and every
error is counted: both must be zero. The mean batch the server's dynamic batcher formed comes from Triton's
metrics (inferences / executions). The in-process ONNX Runtime throughput at batch 1 is measured in the same run,
so the server's overhead reads as a ratio. Writes benchmarks/results/triton-load-cpu.json with the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_card import machine  # noqa: E402

from ncis_deploy.bench.serving import ServerProcess, batch_counters, load_test, malformed_requests  # noqa: E402
from ncis_deploy.exporters.manifest import ONNX, open_export  # noqa: E402
from ncis_deploy.fileio import write_json  # noqa: E402
from ncis_deploy.runners import make_runner  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, default=None, help="an export directory (default: export one now)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per client count and protocol")
    ap.add_argument("--protocols", nargs="+", default=["http", "grpc"], choices=["http", "grpc"])
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "triton-load-cpu.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        export_dir = args.export
        if export_dir is None:
            export_dir = Path(tmp) / "export"
            subprocess.run([sys.executable, "-m", "ncis_deploy.cli", "export", "--out", str(export_dir)], check=True)
        with make_runner("onnxruntime", open_export(export_dir).path(ONNX)) as runner:
            h, w = runner.input_spec.fixed_hw or (224, 224)
            rng = np.random.default_rng(0)
            inputs = [rng.random((1, 3, h, w), dtype=np.float32) for _ in range(8)]
            refs = [runner.infer(x) for x in inputs]
            # in-process baseline, same inputs, batch 1, sequential; timed like `bench`: inputs checked once, above
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < min(args.seconds, 10.0):
                runner.infer_impl(inputs[n % len(inputs)])
                n += 1
            in_process = n / (time.perf_counter() - t0)
        print(f"in-process onnxruntime, batch 1: {in_process:.2f} img/s", flush=True)

        runs = []
        with ServerProcess(export_dir, "--instances", args.instances) as sp:
            urls = {"http": sp.http_url, "grpc": sp.grpc_url}
            for c in args.clients:
                for proto in args.protocols:
                    load_test(urls[proto], "ncis_purifier", inputs, refs, c, requests_per_client=1, protocol=proto)
                    n0, e0 = batch_counters(sp.metrics_url)
                    r = load_test(urls[proto], "ncis_purifier", inputs, refs, c, duration_s=args.seconds,
                                  protocol=proto, progress=lambda m, p=proto: print(f"{p:>4} {m}", flush=True))
                    n1, e1 = batch_counters(sp.metrics_url)
                    r["mean_server_batch"] = (n1 - n0) / (e1 - e0) if e1 > e0 else None
                    r["vs_in_process"] = r["throughput_img_s"] / in_process
                    runs.append(r)
            max_batch = open_export(export_dir).max_batch
            bad = malformed_requests(sp.http_url, "ncis_purifier", inputs[0], max_batch=max_batch)
        report = {
            "command": "python benchmarks/triton_load.py " + " ".join(sys.argv[1:]),
            "what": "ncis-deploy serve (tritonserver via nvidia-pytriton, onnxruntime CPU runner) on loopback; "
                    "one image per request; clients are threads in one process",
            "export": {"dir": str(args.export) if args.export else "default export (ncis, 224x224)",
                       "input": [1, 3, h, w]},
            "server": {"instances": args.instances, "returncode": sp.returncode,
                       "stopped_cleanly": sp.returncode == 0 and "stopped" in sp.output.splitlines()},
            "in_process_onnxruntime_img_s": in_process,
            "runs": runs,
            "malformed_requests": bad,
            "errors_total": sum(r["errors"] for r in runs),
            "mismatches_total": sum(r["mismatches"] for r in runs),
            "machine": machine() | {"load_average": os.getloadavg()},
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    print(f"\n{'proto':<6}{'clients':>8}{'img/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'batch':>7}{'vs in-proc':>12}")
    for r in runs:
        lat, b = r["latency_ms"], r["mean_server_batch"]
        print(f"{r['protocol']:<6}{r['clients']:>8}{r['throughput_img_s']:>9.2f}{lat['median']:>9.1f}{lat['p99']:>9.1f}"
              f"{r['errors']:>8}{b if b is None else round(b, 2):>7}{r['vs_in_process']:>11.2f}x")
    print(f"malformed requests refused: {sum(b['refused'] for b in bad)}/{len(bad)}, server kept serving: "
          f"{all(b['next_request_ok'] for b in bad)}; wrote {args.out}")
    if report["errors_total"] or report["mismatches_total"] or not report["server"]["stopped_cleanly"]:
        raise SystemExit("load test FAILED: errors, mismatches or an unclean stop (see the JSON)")


if __name__ == "__main__":
    main()
