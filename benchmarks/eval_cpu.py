"""Record `ncis-deploy eval` with no arguments on this CPU machine, timed against the 10-minute target.

    python benchmarks/eval_cpu.py [--out benchmarks/results/eval-cpu.json]

Runs the command exactly as a user would (a fresh process, no arguments except --json/--plot), and keeps its report
whole with the wall time of the process (imports and model loading included) and the load average around it: the
machine has 2 cores and may be shared, so the load says how far to trust the time.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

from ncis_deploy.fileio import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "eval-cpu.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        js = Path(tmp) / "eval.json"
        cmd = ["ncis-deploy", "eval", "--json", str(js), "--plot", str(args.out.with_suffix(".png"))]
        print("$", shlex.join(cmd), flush=True)
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE)
        wall = time.perf_counter() - t0
        print(proc.stdout)
        if proc.returncode != 0:
            raise SystemExit(f"ncis-deploy eval failed with exit code {proc.returncode}")
        report = json.loads(js.read_text())
    record = {"command": "ncis-deploy eval", "recorded_by": "python benchmarks/eval_cpu.py",
              "process_wall_s": round(wall, 1), "target_s": 600, "within_target": wall < 600,
              "load_average_before": [round(v, 2) for v in load_before],
              "load_average_after": [round(v, 2) for v in os.getloadavg()],
              "markdown": proc.stdout, "report": report}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)
    print(f"wall {wall:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
