"""The timing loops, trtexec's way: a time-based warm-up in milliseconds, then a time-based (or counted) run.

* warm-up: the first, input-checked call, then more calls until ``warmup_ms`` of host time has passed;
* timed run: ``iterations`` calls exactly, or calls until ``duration_s`` has passed *and* at least
  ``min_iterations`` were made (so a query slower than the duration is still timed several times);
* interleaved (``--vs``): every backend is warmed up, then rounds run one query of each backend, the order
  reversed every other round, with a short untimed pause before each query (:data:`INTERLEAVE_PAUSE_S`), until
  ``duration_s`` × the number of backends of wall time has passed and ``min_iterations`` rounds were made. Drift on
  a shared machine then hits every backend alike, and each round gives a paired ratio. Interleaving suits queries
  of a millisecond and more; sub-millisecond queries are better timed back to back (the sequential mode).
"""

from __future__ import annotations

import time
from typing import Callable

from ncis_deploy.bench.stats import summarize, variance_warnings

perf = time.perf_counter


def warm_up(first: Callable[[], object], again: Callable[[], object], warmup_ms: float) -> tuple[int, float]:
    """(calls made, host ms taken): ``first()`` once, then ``again()`` until ``warmup_ms`` have passed."""
    t0 = perf()
    first()
    n = 1
    while (perf() - t0) * 1e3 < warmup_ms:
        again()
        n += 1
    return n, (perf() - t0) * 1e3


def run_timed(run_once: Callable[[], object], duration_s: float | None, iterations: int | None,
              min_iterations: int) -> list:
    samples = []
    t0 = perf()
    while True:
        samples.append(run_once())
        if iterations is not None:
            if len(samples) >= iterations:
                return samples
        elif perf() - t0 >= duration_s and len(samples) >= min_iterations:
            return samples


# Between two queries of different backends the harness sleeps (untimed) this long: after a run, onnxruntime's
# intra-op worker keeps spinning before it blocks (measured here, 2-core EPYC, ncis at 224²: ~40 ms of CPU burned
# after each query; torch/OpenMP 2-10 ms), and on a small CPU that spinning thread would steal a core from the next
# backend's query and bias the ratio against it.
INTERLEAVE_PAUSE_S = 0.06


def run_interleaved(run_onces: list[Callable[[], object]], duration_s: float | None, iterations: int | None,
                    min_iterations: int, pause_s: float = INTERLEAVE_PAUSE_S) -> list[list]:
    k = len(run_onces)
    samples: list[list] = [[] for _ in range(k)]
    t0 = perf()
    rounds = 0
    while True:
        order = range(k) if rounds % 2 == 0 else range(k - 1, -1, -1)
        for i in order:
            if pause_s > 0:
                time.sleep(pause_s)
            samples[i].append(run_onces[i]())
        rounds += 1
        if iterations is not None:
            if rounds >= iterations:
                return samples
        elif perf() - t0 >= duration_s * k and rounds >= min_iterations:
            return samples


def _ms(xs) -> list[float]:
    return [v * 1e3 for v in xs]


def result_record(target, batch: int, hw: tuple[int, int], samples: list[dict], warm: tuple[int, float],
                  memory: dict, interleaved: bool) -> dict:
    """One backend × batch entry of the report from its per-query samples (seconds)."""
    host = [s["host"] for s in samples]
    split = target.split and "compute" in samples[0]
    if split:
        h2d, compute, d2h = ([s[k] for s in samples] for k in ("h2d", "compute", "d2h"))
        latency = [a + b + c for a, b, c in zip(h2d, compute, d2h)]
    else:
        latency = host
    lat = summarize(_ms(latency))
    kind = "gpu" if target.spec.on_gpu else "cpu"
    rec = {
        "backend": target.spec.backend, "device": target.spec.device, "precision": target.spec.precision,
        "label": target.label, "providers": target.providers, "runtime": target.runtime, "batch": batch,
        "height": hw[0], "width": hw[1], "interleaved": interleaved,
        "warmup_iterations": warm[0], "warmup_ms": warm[1], "iterations": len(samples), "walltime_s": sum(host),
        "throughput_ips": batch * len(samples) / sum(host) if sum(host) > 0 else 0.0,
        "latency_ms": lat, "host_ms": summarize(_ms(host)),
        "h2d_ms": summarize(_ms(h2d)) if split else None,
        "compute_ms": summarize(_ms(compute)) if split else None,
        "d2h_ms": summarize(_ms(d2h)) if split else None,
        "timer": target.timer, "cuda_graph": bool(target.cuda_graph), "data_transfers": bool(target.data_transfers),
        "memory": memory, "stages": None, "warnings": [],
    }
    if split:
        rec["warnings"] += variance_warnings(rec["compute_ms"], "gpu", "GPU compute time")
        if target.data_transfers:  # trtexec's transfer-bound warnings
            for part in ("h2d", "d2h"):
                if rec[f"{part}_ms"]["median"] >= rec["compute_ms"]["median"]:
                    rec["warnings"].append(f"throughput may be bound by {part.upper()} transfers rather than "
                                           "compute; --no-data-transfers times compute alone")
    else:
        rec["warnings"] += variance_warnings(lat, kind)
    return rec


def stage_record(plan: list[dict], per_stage: list[list[float]], whole_median_ms: float, how: str) -> dict:
    """The --stages entry from each stage's samples (seconds; stages may have different counts)."""
    rows = []
    for step, ts in zip(plan, per_stage):
        rows.append({"name": step["name"], "kind": step["kind"], "latency_ms": summarize(_ms(ts))})
    total = sum(r["latency_ms"]["median"] for r in rows)
    for r in rows:
        r["share_pct"] = r["latency_ms"]["median"] / total * 100 if total > 0 else 0.0
    return {"iterations": min(len(ts) for ts in per_stage), "rows": rows, "sum_median_ms": total,
            "whole_median_ms": whole_median_ms, "how": how}


def paired_ratio(a: list[dict], b: list[dict], key: str = "latency") -> dict:
    """ratio of throughputs a/b from interleaved samples: median latency(b) / median latency(a), and per round."""
    la, lb = _lat(a), _lat(b)
    sa, sb = summarize(_ms(la)), summarize(_ms(lb))
    per_round = sorted(y / x for x, y in zip(la, lb) if x > 0)
    from ncis_deploy.bench.stats import median

    return {"ratio": sb["median"] / sa["median"] if sa["median"] > 0 else 0.0,
            "paired": {"median": median(per_round), "min": per_round[0], "max": per_round[-1]},
            "rounds": len(per_round)}


def _lat(samples: list[dict]) -> list[float]:
    if "compute" in samples[0]:
        return [s["h2d"] + s["compute"] + s["d2h"] for s in samples]
    return [s["host"] for s in samples]
