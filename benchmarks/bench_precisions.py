"""Every precision × backend usable on this CPU against ORT FP32 in one run, and why throughput falls with batch.

    python benchmarks/bench_precisions.py [--export DIR] [--duration 2] [--batches 1 2 4 8] [--torch]
    python benchmarks/bench_precisions.py --readme      # redraw README's block, the .md and the .png from the JSON

1. ``run_bench`` (what ``ncis-deploy bench`` runs) on the ``ncis`` purifier at 224², batches 1/2/4/8: every
   backend × precision usable here (torch only with --torch: it is 5× slower and adds minutes), all measured
   interleaved with ONNX Runtime FP32, with a quality guard (max/mean abs error, PSNR vs ORT FP32 on the hold-out
   photos) for each bf16 / int8 target. int8 runs an export's purifier_int8.onnx: without ``--export`` the script
   exports ``ncis`` at 224² with ``--int8`` into a temporary directory when this version of the exporter has
   ``--int8`` (else, or with ``--preset``, it benches the preset and records int8 as skipped, with the reason).
2. Batch split: per CPU runtime, one query of the largest batch against the same images as that many batch-1
   queries, interleaved round by round: does splitting a batch give back the throughput batching lost?
3. Working set: ORT FP32 at 224² batch 1 and batch 4 and at 448² batch 1 (the pixels of batch 4 in one image),
   interleaved: if 448² batch 1 is as slow per pixel as 224² batch 4, the size of the activations, not batching as
   such, is what costs.

Writes benchmarks/results/bench-precisions-cpu.{json,md,png} with the CPU model, ISA flags, cache sizes and the load
average around each part (the machine is shared: quote the ratios, which are measured interleaved), and rewrites the
block between the ``perf`` markers of README.md from the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "bench-precisions-cpu"
README = ROOT / "README.md"
BEGIN, END = "<!-- perf:begin (benchmarks/bench_precisions.py --readme) -->", "<!-- perf:end -->"
REF = "onnxruntime:cpu"


def caches() -> dict[str, str]:
    """CPU cache sizes from sysfs (what an activation has to fit in)."""
    out = {}
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((d / f).read_text().strip() for f in ("level", "type", "size"))
            shared = (d / "shared_cpu_list").read_text().strip()
        except OSError:
            continue
        out[f"L{level} {kind.lower()}"] = f"{size} (cpus {shared})"
    return out


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def timed(fn):
    def once() -> dict:
        t0 = time.perf_counter()
        fn()
        return {"host": time.perf_counter() - t0}
    return once


def interleave(named: dict, duration: float, rounds: int, warmup_ms: float) -> dict[str, list[dict]]:
    """Warm every callable up, then run them round-robin (the bench harness's interleaving)."""
    from ncis_deploy.bench import harness

    fns = [timed(f) for f in named.values()]
    for f in fns:
        harness.warm_up(f, f, warmup_ms)
    samples = harness.run_interleaved(fns, duration, None, rounds)
    return dict(zip(named, samples))


def stats(samples: list[dict], images: int, pixels: int) -> dict:
    from ncis_deploy.bench.stats import summarize

    s = summarize([x["host"] * 1e3 for x in samples])
    return {"images": images, "latency_ms": s, "throughput_ips": images / (s["median"] / 1e3),
            "megapixels_per_s": images * pixels / 1e6 / (s["median"] / 1e3)}


# ------------------------------------------------------------------------------------------------------- measure
def measure(args) -> dict:
    from ncis_deploy.bench import BenchOptions, run_bench, validate
    from ncis_deploy.bench import core
    from ncis_deploy.bench.targets import make_target
    from ncis_deploy.cpu import cpu_record
    from ncis_deploy.doctor import report as doctor_report
    from ncis_deploy.exporters.onnx import build_onnx

    record: dict = {"benchmark": "every precision × backend usable on this CPU vs ORT FP32 (interleaved in one run), "
                                 "and the throughput-vs-batch effect",
                    "script": "benchmarks/bench_precisions.py", "machine": {**cpu_record(), "caches": caches()},
                    "load_average": {"start": load()}}
    avail = core.availability(doctor_report())
    labels = [s.label for s in core.default_backends(avail) if args.torch or s.backend != "torch"]
    opts = BenchOptions(export_dir=args.export, preset=None if args.export else "ncis", backends=tuple(labels),
                        vs=REF, batches=tuple(args.batches), duration_s=args.duration, warmup_ms=args.warmup_ms,
                        height=None if args.export else args.size, width=None if args.export else args.size,
                        diffpure=False, notes=["benchmarks/bench_precisions.py: every backend × precision usable "
                                               "here" + ("" if args.torch else " but torch (--torch adds it)")])
    # the default list would skip int8 of a preset with its reason; with an explicit list it is an error, so the
    # preset's int8 targets are dropped here and their reason recorded by hand
    if not args.export:
        dropped = [lb for lb in labels if lb.endswith(":int8")]
        opts.backends = tuple(lb for lb in labels if lb not in dropped)
    else:
        dropped = []
    print(f"bench: {', '.join(opts.backends)} at batches {args.batches}", flush=True)
    t0 = time.perf_counter()
    report = run_bench(opts, progress=lambda m: print("  " + m, flush=True),
                       command="benchmarks/bench_precisions.py (run_bench)")
    for lb in dropped:
        report["skipped"].append({"backend": lb, "batch": None,
                                  "reason": "preset ncis has no int8 artifact: int8 runs the Q/DQ purifier_int8.onnx "
                                            "of an export made with `ncis-deploy export --int8` (run this script "
                                            "with --export DIR on one)"})
    validate(report)
    record["bench"] = report
    record["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    record["load_average"]["after_bench"] = load()

    # 2 + 3: the batch effect, with the runtimes the bench ran (torch aside)
    h, w = report["settings"]["height"], report["settings"]["width"]
    big = max(args.batches)
    ran = list(dict.fromkeys(r["label"] for r in report["results"] if r["backend"] != "torch"))
    src = core._open_source(BenchOptions(export_dir=args.export, preset=None if args.export else "ncis", height=h,
                                         width=w), lambda m: None)
    rng = np.random.default_rng(0)
    xb = rng.random((big, 3, h, w), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="ncis-precisions-") as tmpname:
        tmp = Path(tmpname)
        targets = {}
        for lb in ran:
            spec = core.parse_backend(lb, avail)
            art = core.artifact_for(spec, src, tmp, args.batches, lambda m: None)
            targets[lb] = make_target(spec, art, batches=tuple(args.batches), hw=(h, w)).activate()
        try:
            named = {}
            for lb, t in targets.items():
                r = t.runner
                named[f"{lb} batch {big}"] = lambda r=r: r.infer_impl(xb)
                named[f"{lb} {big} × batch 1"] = lambda r=r: [r.infer_impl(xb[i:i + 1]) for i in range(big)]
            print(f"batch split: one batch-{big} query vs {big} batch-1 queries on {', '.join(targets)}", flush=True)
            samples = interleave(named, args.duration, args.rounds, args.warmup_ms)
        finally:
            for t in targets.values():
                t.close()
        split = []
        from ncis_deploy.bench.harness import paired_ratio

        for lb in targets:
            whole, parts = samples[f"{lb} batch {big}"], samples[f"{lb} {big} × batch 1"]
            split.append({"label": lb, "batch": big, "whole": stats(whole, big, h * w),
                          "split": stats(parts, big, h * w), "split_over_whole": paired_ratio(parts, whole)})
            print(f"  {lb}: batch {big} {split[-1]['whole']['throughput_ips']:.2f} img/s, {big} × batch 1 "
                  f"{split[-1]['split']['throughput_ips']:.2f} img/s ({split[-1]['split_over_whole']['ratio']:.2f}×)",
                  flush=True)
        record["batch_split"] = split
        record["load_average"]["after_batch_split"] = load()

        from ncis_deploy.runners import make_runner

        purifier = src.purifier
        big_hw = 2 * h, 2 * w
        import onnx

        onnx.save(build_onnx(purifier, *big_hw), str(tmp / "big.onnx"))
        small = make_runner("onnxruntime", core._preset_onnx(src, tmp), providers="cpu").activate()
        large = make_runner("onnxruntime", str(tmp / "big.onnx"), providers="cpu").activate()
        try:
            x1, x4, xl = xb[:1], np.concatenate([xb] * 4)[:4], rng.random((1, 3, *big_hw), dtype=np.float32)
            cases = {f"{h}² batch 1": (lambda: small.infer_impl(x1), 1, h * w),
                     f"{h}² batch 4": (lambda: small.infer_impl(x4), 4, h * w),
                     f"{big_hw[0]}² batch 1": (lambda: large.infer_impl(xl), 1, big_hw[0] * big_hw[1])}
            print(f"working set: ORT FP32 {', '.join(cases)}", flush=True)
            s = interleave({k: v[0] for k, v in cases.items()}, args.duration, args.rounds, args.warmup_ms)
        finally:
            small.deactivate()
            large.deactivate()
    f = purifier.config["bsn"]["filters"]
    record["working_set"] = {
        "backend": REF, "rows": [{"case": k, **stats(s[k], n, px)} for k, (_, n, px) in cases.items()],
        "activation_mb_per_image": {f"{h}²": f * h * w * 4 / 1e6,
                                    f"{big_hw[0]}²": f * big_hw[0] * big_hw[1] * 4 / 1e6},
        "filters": f,
    }
    for row in record["working_set"]["rows"]:
        print(f"  {row['case']}: {row['megapixels_per_s']:.3f} MP/s", flush=True)
    record["load_average"]["end"] = load()
    record["note"] = ("shared 2-core machine (other agents and a training job ran during these runs; see the load "
                      "averages): absolute times move by tens of percent between runs; the ratios, measured "
                      "interleaved in one run, are the figures to quote")
    return record


# -------------------------------------------------------------------------------------------------------- render
def by_label(rep: dict) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for r in rep["results"]:
        out.setdefault(r["label"], {})[r["batch"]] = r
    return out


def ratio_of(rep: dict, label: str, batch: int) -> float | None:
    if label == REF:
        return 1.0
    return next((c["ratio"] for c in rep["comparisons"] if c["backend"] == label and c["batch"] == batch), None)


def psnr_of(rep: dict, label: str) -> str:
    q = next((q for q in rep.get("quality", []) if q["label"] == label), None)
    if q is None:
        return "FP32" if label.count(":") < 2 else "–"
    return "identical" if q["psnr_db"] is None else f"{q['psnr_db']:.1f} dB" + ("" if q["ok"] else " ⚠")


def readme_block(record: dict) -> str:
    rep = record["bench"]
    m = rep["machine"]
    lo, hi = min(rep["settings"]["batches"]), max(rep["settings"]["batches"])
    rows = [f"| backend | img/s, batch {lo} | img/s, batch {hi} | × ORT FP32 (batch {lo} / {hi}) | PSNR vs FP32 |",
            "|---|---:|---:|---:|---:|"]
    for label, per in by_label(rep).items():
        a, b = ratio_of(rep, label, lo), ratio_of(rep, label, hi)
        rows.append(f"| `{label}` | {per[lo]['throughput_ips']:.2f} | {per[hi]['throughput_ips']:.2f} | "
                    f"{a:.2f}× / {b:.2f}× | {psnr_of(rep, label)} |")
    skipped = sorted({s["backend"] for s in rep["skipped"] if s["batch"] is None})
    load_avg = m.get("load_average", {}).get("before") or ["?"]
    head = (f"`ncis` at {rep['settings']['height']}², {m['cpu']} ({', '.join(m['isa'])}), {m['cores']} cores, load "
            f"average {load_avg[0]} (shared): every backend measured interleaved with ORT FP32 in one run "
            "([JSON](benchmarks/results/bench-precisions-cpu.json), "
            "[details](docs/bench.md#precisions-and-batch-size)).")
    foot = ((f"Not run: {', '.join(f'`{s}`' for s in skipped)} (see the JSON). " if skipped else "")
            + batch_sentence(record) + " ([why](docs/bench.md#precisions-and-batch-size)).")
    return "\n".join([BEGIN, *_wrap(head), "", *rows, "", *_wrap(foot), END])


def _wrap(text: str) -> list[str]:
    # only at spaces: a break at a hyphen inside a link's path breaks the link
    return textwrap.wrap(text, 118, break_on_hyphens=False, break_long_words=False)


def batch_sentence(record: dict) -> str:
    """What batching bought ORT FP32 in this run, from the figures (never a fixed claim)."""
    rep = record["bench"]
    per = by_label(rep)[REF]
    lo, hi = min(per), max(per)
    gain = per[hi]["throughput_ips"] / per[lo]["throughput_ips"]
    split = next(s for s in record["batch_split"] if s["label"] == REF)
    return (f"Batch {hi} gave ORT FP32 {gain:.2f}× the throughput of batch {lo}; its {hi} images as {hi} batch-1 "
            f"queries, interleaved with the batch-{hi} query, {split['split_over_whole']['ratio']:.2f}× of it")


def markdown(record: dict) -> str:
    from ncis_deploy.bench import render_markdown

    lines = [render_markdown(record["bench"]), "", "#### Batch split (one query of the batch vs one query per image, "
             "interleaved)", "", "| backend | batch | img/s, one query | img/s, one query per image | ratio "
             "(paired min – max) |", "|---|---:|---:|---:|---:|"]
    for s in record["batch_split"]:
        r = s["split_over_whole"]
        lines.append(f"| {s['label']} | {s['batch']} | {s['whole']['throughput_ips']:.2f} | "
                     f"{s['split']['throughput_ips']:.2f} | {r['ratio']:.2f}× ({r['paired']['min']:.2f} – "
                     f"{r['paired']['max']:.2f}) |")
    ws = record["working_set"]
    lines += ["", f"#### Working set ({ws['backend']}, interleaved)", "", "| case | img/s | megapixels/s |",
              "|---|---:|---:|"]
    lines += [f"| {r['case']} | {r['throughput_ips']:.2f} | {r['megapixels_per_s']:.3f} |" for r in ws["rows"]]
    lines += ["", f"Load average: {record['load_average']}. Caches: {record['machine']['caches']}.", ""]
    return "\n".join(lines)


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rep = record["bench"]
    per = by_label(rep)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.8))
    for i, (label, rows) in enumerate(per.items()):
        bs = sorted(rows)
        color = f"C{i}"  # one colour per backend in both panels
        ax1.plot(bs, [rows[b]["throughput_ips"] for b in bs], marker="o", label=label, color=color)
        ratios = [ratio_of(rep, label, b) for b in bs]
        if label != REF:
            ax2.plot(bs, ratios, marker="o", label=label, color=color)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(rep["settings"]["batches"])
        ax.set_xticklabels([str(b) for b in rep["settings"]["batches"]])
        ax.set_xlabel("batch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_ylabel("images / s (batch × queries / total time)")
    ax1.set_title(f"throughput vs batch, {rep['settings']['height']}²")
    ax2.axhline(1.0, color="grey", lw=1)
    ax2.set_ylabel(f"throughput ÷ {REF} (FP32), same run")
    ax2.set_title("ratio vs ORT FP32, measured interleaved")
    sp = record["batch_split"]
    idx = np.arange(len(sp))
    ax3.bar(idx - 0.2, [s["whole"]["throughput_ips"] for s in sp], 0.4, label=f"one query of {sp[0]['batch']}")
    ax3.bar(idx + 0.2, [s["split"]["throughput_ips"] for s in sp], 0.4, label=f"{sp[0]['batch']} queries of 1")
    ax3.set_xticks(idx)
    ax3.set_xticklabels([s["label"].replace(":cpu", "") for s in sp], fontsize=7)
    ax3.set_ylabel("images / s")
    ax3.set_title("batch split, interleaved")
    ax3.legend(fontsize=7)
    m = record["machine"]
    source = rep["purifier"]["source"]
    if "/tmp" in source:  # a temporary export: what it held is the preset, not the path
        source = "ncis preset (export --int8 in a temporary directory)"
    fig.suptitle(f"ncis-deploy bench precisions — {source} — {m['cpu']} "
                 f"({', '.join(m['isa'])}), "
                 f"{m['cores']} cores, load {rep['machine']['load_average']['before'][0]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_readme(record: dict, readme: Path = README) -> bool:
    """Rewrite the block between the perf markers of the README; True if it changed."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{readme} has no {BEGIN} ... {END} block to rewrite")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + readme_block(record) + tail
    if new != text:
        readme.write_text(new)
    return new != text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", default=None, help="an export directory (with purifier_int8.onnx for int8); "
                                                   "default: the ncis preset at 224²")
    ap.add_argument("--size", type=int, default=224, help="H = W for the preset (an export has its own)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--duration", type=float, default=2.0, help="timed seconds per target and case")
    ap.add_argument("--rounds", type=int, default=3, help="at least this many interleaved rounds")
    ap.add_argument("--warmup-ms", type=float, default=300.0)
    ap.add_argument("--torch", action="store_true", help="also time torch eager (slow)")
    ap.add_argument("--preset", action="store_true", help="bench the ncis preset even where `export --int8` exists")
    ap.add_argument("--readme", action="store_true",
                    help="measure nothing: redraw README's block, the .md and the .png from the recorded JSON")
    ap.add_argument("--out", type=Path, default=OUT, help="results path without suffix (.json, .md, .png); the "
                                                          "README block is rewritten only for the default")
    args = ap.parse_args()
    if args.readme:  # every view of the recorded JSON, redrawn without measuring again
        record = json.loads(args.out.with_suffix(".json").read_text())
        args.out.with_suffix(".md").write_text(markdown(record))
        plot(record, args.out.with_suffix(".png"))
        readme = ("rewritten" if write_readme(record) else "unchanged") if args.out == OUT else "not touched (--out)"
        print(f"{args.out}.md and .png redrawn; README block {readme}")
        return
    from ncis_deploy.fileio import write_json

    with tempfile.TemporaryDirectory(prefix="ncis-precisions-export-") as tmp:
        if args.export is None and not args.preset:
            from ncis_deploy.exporters.pipeline import ExportOptions, export

            if "int8" in ExportOptions.__dataclass_fields__:
                args.export = str(Path(tmp) / "ncis_export")
                print(f"exporting ncis at {args.size}² with --int8 into a temporary directory", flush=True)
                export(ExportOptions(source="ncis", out=args.export, height=args.size, width=args.size, int8=True,
                                     tensorrt=False), progress=lambda m: print("  export: " + m, flush=True))
        record = measure(args)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), record)
    out.with_suffix(".md").write_text(markdown(record))
    plot(record, out.with_suffix(".png"))
    if out == OUT:
        write_readme(record)
    print(f"wrote {out}.json, .md, .png" + (" and README's block" if out == OUT else ""))


if __name__ == "__main__":
    main()
