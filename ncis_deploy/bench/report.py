"""Render a bench report: a Markdown table (stdout) and a PNG plot (matplotlib, imported only when asked)."""

from __future__ import annotations

import os
from pathlib import Path

from ncis_deploy.errors import UserError, missing_package


def fmt_time(ms: float) -> str:
    """Milliseconds as a short human time with its unit."""
    if ms < 1:
        return f"{ms * 1e3:.0f} µs"
    if ms < 1e3:
        return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"
    s = ms / 1e3
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    return f"{s / 3600:.3g} h"


def _mib(v) -> str:
    return "–" if v is None else f"{v:,.0f}"


def _ratio(v: float) -> str:
    return f"{v:,.0f}×" if v >= 100 else f"{v:.2f}×"


_STATS = ("mean", "median", "p90", "p95", "p99", "min", "max")


def render_markdown(report: dict) -> str:
    """The report as Markdown: heading, one latency table (measured rows, then stand-in context rows), then the
    sections that only appear when they have content (comparisons, stages, stand-in context, skipped, warnings)."""
    gpu = any(r["h2d_ms"] is not None for r in report["results"])  # the H2D/compute/D2H and CUDA memory columns
    return "\n".join([*_heading(report), *_latency_table(report, gpu), *_comparison_section(report["comparisons"]),
                      *_quality_section(report.get("quality", [])), *_stage_section(report["results"]),
                      *_stand_in_section(report["context"]), *_footer(report)])


def _heading(report: dict) -> list[str]:
    s, m = report["settings"], report["machine"]
    mode = (f"{s['iterations']} iterations" if s["iterations"] is not None else
            f"{s['duration_s']:g} s per case, at least {s['min_iterations']} iterations")
    isa = f" ({', '.join(m['isa'])})" if m.get("isa") else ""
    load = (m.get("load_average") or {}).get("before")
    inter = ""
    if s["vs"]:
        inter = (f"; every backend interleaved with {s['vs']}" if s.get("vs_default") else
                 "; backends interleaved (--vs)")
    return [f"### ncis-deploy bench: {report['purifier']['source']}, {s['height']}×{s['width']}",
            "",
            f"{m['cpu']}{isa}, {m['cores']} cores"
            + (f", {', '.join(m['gpus'])}" if m['gpus'] else ", no GPU")
            + (f", load average {load[0]:.1f}" if load else "")
            + f"; warm-up {s['warmup_ms']:g} ms, {mode}"
            + inter + ". Latency per query of `batch` images.",
            ""]


def _latency_table(report: dict, gpu: bool) -> list[str]:
    head = ["backend", "batch", "iters", "img/s", "mean", "median", "p90", "p95", "p99", "min", "max", "CV"]
    if gpu:
        head += ["H2D", "compute", "D2H"]
    head += ["peak RSS MiB"] + (["CUDA max alloc MiB"] if gpu else []) + ["notes"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if h in ("backend", "notes") else "---:" for h in head) + "|"]
    for r in report["results"]:
        split = [fmt_time(r[k]["median"]) if r[k] else "–" for k in ("h2d_ms", "compute_ms", "d2h_ms")]
        lines.append(_table_row(f"{r['label']}", r["batch"], r["iterations"], r["throughput_ips"], r["latency_ms"],
                                split, r["memory"], _notes(r), gpu))
    for c in report["context"]:  # the stand-in: per image, extrapolated from the timed steps
        lines.append(_table_row(f"*{c['label']}*", 1, c["timed_steps"], c["throughput_ips"], c["per_image_ms"],
                                ["–", "–", "–"], c["memory"],
                                f"one step {fmt_time(c['step_ms']['median'])}, × {c['steps']} (extrapolated)", gpu))
    return lines


def _table_row(label: str, batch: int, iters: int, ips: float, lat: dict, split: list[str], memory: dict, note: str,
               gpu: bool) -> str:
    """One row of the latency table; ``split`` (H2D, compute, D2H cells) and CUDA memory only in GPU reports."""
    row = [label, str(batch), str(iters), f"{ips:.3g}", *(fmt_time(lat[k]) for k in _STATS), f"{lat['cv_pct']:.1f}%"]
    if gpu:
        row += split
    row += [_mib(memory["rss_peak_mib"])]
    if gpu:
        row += [_mib(memory["cuda_max_allocated_mib"])]
    row += [note]
    return "| " + " | ".join(row) + " |"


def _notes(r: dict) -> str:
    lat = r["latency_ms"]
    notes = []
    if lat["cv_pct"] > 10 or (lat["drift_pct"] or 0) > 10 or r["warnings"]:
        notes.append("⚠ high variance" if any("unstable" in w or "drift" in w for w in r["warnings"])
                     else "⚠ " + r["warnings"][0] if r["warnings"] else "")
    if r["cuda_graph"]:
        notes.append("CUDA graph")
    if not r["data_transfers"]:
        notes.append("no data transfers")
    return "; ".join(n for n in notes if n)


def _comparison_section(comparisons: list[dict]) -> list[str]:
    if not comparisons:
        return []
    lines = ["", "**Interleaved comparison** (measured round-robin in one run; ratio = throughput of backend / "
                 "throughput of the other, from median latencies; paired = per-round ratios):", "",
             "| backend | vs | batch | ratio | paired min – max | rounds |", "|---|---|---:|---:|---:|---:|"]
    for c in comparisons:
        lines.append(f"| {c['backend']} | {c['vs']} | {c['batch']} | **{_ratio(c['ratio'])}** | "
                     f"{_ratio(c['paired']['min'])} – {_ratio(c['paired']['max'])} | {c['rounds']} |")
    return lines


def _quality_section(quality: list[dict]) -> list[str]:
    if not quality:
        return []
    lines = ["", "**Quality guards** (each low-precision target against the FP32 reference on the hold-out photos, "
                 "centre crops at this size):", "",
             "| backend | vs | photos | max abs | mean abs | PSNR | guard |", "|---|---|---:|---:|---:|---:|---|"]
    for q in quality:
        psnr = "identical" if q["psnr_db"] is None else f"{q['psnr_db']:.1f} dB"
        ok = "ok" if q["ok"] else "⚠ below"
        lines.append(f"| {q['label']} | {q['reference']} | {q['images']} | {q['max_abs']:.2e} | {q['mean_abs']:.2e} "
                     f"| {psnr} | {ok} (≥ {q['guard_psnr_db']:g} dB) |")
    return lines


def _stage_section(results: list[dict]) -> list[str]:
    staged = [r for r in results if r["stages"]]
    if not staged:
        return []
    lines = ["", "**Stages** (each stage on its own, on the real output of the stage before; median):", "",
             "| backend | batch | stage | median | share | whole purifier | sum of stages |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in staged:
        st = r["stages"]
        for i, row in enumerate(st["rows"]):
            whole = (fmt_time(st["whole_median_ms"]), fmt_time(st["sum_median_ms"])) if i == 0 else ("", "")
            lines.append(f"| {r['label']} | {r['batch']} | {row['name']} | {fmt_time(row['latency_ms']['median'])}"
                         f" | {row['share_pct']:.1f}% | {whole[0]} | {whole[1]} |")
    return lines


def _stand_in_section(context: list[dict]) -> list[str]:
    lines = []
    for c in context:
        if c["relative_to_ncis"]:
            rel = " and ".join(f"{_ratio(x['ratio'])} ({x['label']}, batch {x['batch']})"
                               for x in c["relative_to_ncis"])
            lines += ["", f"Stand-in context: one image through the DiffPure-class UNet costs about "
                          f"{fmt_time(c['per_image_ms']['median'])} ({c['steps']} steps, extrapolated from "
                          f"{c['timed_steps']} timed step{'s' if c['timed_steps'] > 1 else ''}), i.e. {rel} the NCIS "
                          "per-image latency. Random weights: cost only, no purification."]
    return lines


def _footer(report: dict) -> list[str]:
    """The skipped cases, then the report's warnings, each list after a blank line."""
    lines = []
    if report["skipped"]:
        lines += [""] + [f"- skipped {s['backend']}" + (f" batch {s['batch']}" if s["batch"] else "")
                         + f": {s['reason']}" for s in report["skipped"]]
    if report["warnings"]:
        lines += [""] + [f"- ⚠ {w}" for w in report["warnings"]]
    return lines


def plot(report: dict, path: str | os.PathLike) -> Path:
    """PNG: latency vs batch per backend (with the stand-in), and the stage breakdown (or throughput)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise missing_package("matplotlib", "plots") from None
    path = Path(path)
    results = report["results"]
    staged = [r for r in results if r["stages"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    labels = list(dict.fromkeys(r["label"] for r in results))
    for lbl in labels:
        rs = sorted((r for r in results if r["label"] == lbl), key=lambda r: r["batch"])
        b = [r["batch"] for r in rs]
        med = [r["latency_ms"]["median"] for r in rs]
        lo = [m - r["latency_ms"]["min"] for m, r in zip(med, rs)]
        hi = [r["latency_ms"]["p90"] - m for m, r in zip(med, rs)]
        ax1.errorbar(b, med, yerr=[lo, hi], marker="o", capsize=3, label=f"{lbl} (median; min–p90)")
    for c in report["context"]:
        ax1.scatter([1], [c["per_image_ms"]["median"]], marker="*", s=160, color="black", zorder=5,
                    label=f"stand-in: DiffPure-class UNet × {c['steps']} steps (batch 1, extrapolated)")
    batches = sorted({r["batch"] for r in results} | {1})

    def batch_axis(ax) -> None:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log", base=2)
        ax.set_xticks(batches)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())

    batch_axis(ax1)
    ax1.set_yscale("log")
    ax1.set_xlabel("batch")
    ax1.set_ylabel("latency per query (ms)")
    ax1.set_title(f"latency vs batch, {report['settings']['height']}×{report['settings']['width']}")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7)
    if staged:
        names = [f"{r['label']}\nbatch {r['batch']}" for r in staged]
        stage_names = list(dict.fromkeys(row["name"] for r in staged for row in r["stages"]["rows"]))
        left = [0.0] * len(staged)
        for sn in stage_names:
            vals = [next((row["latency_ms"]["median"] for row in r["stages"]["rows"] if row["name"] == sn), 0.0)
                    for r in staged]
            ax2.barh(names, vals, left=left, label=sn)
            left = [a + v for a, v in zip(left, vals)]
        ax2.set_xlabel("median ms per query, stacked by stage")
        ax2.set_title("stage breakdown (--stages)")
        ax2.legend(fontsize=7)
    else:
        for lbl in labels:
            rs = sorted((r for r in results if r["label"] == lbl), key=lambda r: r["batch"])
            ax2.plot([r["batch"] for r in rs], [r["throughput_ips"] for r in rs], marker="o", label=lbl)
        batch_axis(ax2)
        ax2.set_xlabel("batch")
        ax2.set_ylabel("images / s")
        ax2.set_title("throughput (run with --stages for the stage breakdown)")
        ax2.grid(True, which="both", alpha=0.3)
        ax2.legend(fontsize=7)
    m = report["machine"]
    fig.suptitle(f"ncis-deploy bench — {report['purifier']['source']} — {m['cpu']}, {m['cores']} cores"
                 + (f", {m['gpus'][0]}" if m["gpus"] else ""), fontsize=9)
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise UserError(f"cannot write the plot to {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return path
