"""Experiment: does a fixed blend with a centre pixel (FBI-Net's a·Z + b with a constant a) buy clean agreement?

    python benchmarks/blend.py [--out benchmarks/results/blend-cpu.json]

A blind-spot output never sees the pixel it predicts, so on a clean image it drops detail the classifier may need.
FBI-Net puts the centre back with a per-pixel blend a·Z + b. This measures the plain form, a constant λ, in the eval's
own setting (88 crops of the 11 bundled photos, PGD 8/255 10 steps purifier-blind, agreement with the undefended
clean top-1), for two choices of Z:
- ``input``: out = λ·x̃ + (1 − λ)·purifier(x̃), the purifier's own input (adversarial noise included), for GS
  alone (the ``gs`` preset and the two GS settings nearest ncis on robust agreement) and for ncis;
- ``bsn_input``: out = λ·GS(x̃) + (1 − λ)·BSN(GS(x̃)), the BSN's input (its centre pixel, already smoothed): for
  ncis, a straight line between the ``gs`` and ``ncis`` outputs.
The adversarial images are made once (on the classifier alone), so every row scores the same images. Writes JSON and
a clean-vs-robust plot next to it (``--plot-only`` redraws the plot from the JSON). Not a shipped stage: see
docs/presets.md, "Blending the centre pixel back".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ncis_deploy.cpu import cpu_record
from ncis_deploy.eval import attacks as A
from ncis_deploy.eval.classifiers import load_classifier
from ncis_deploy.eval.core import EvalOptions, load_eval_set, purify_batched
from ncis_deploy.fileio import write_json
from ncis_deploy.eval.sweep import DEFAULT_EPS
from ncis_deploy.model.purifier import PRESETS, load_purifier

LAMBDAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
NCIS_GS = dict(PRESETS["ncis"].stages[0])  # the ncis preset's GS stage (k5 σ1 T3), asked of the preset
GS_ONLY = {"gs (k5 σ1 T3)": [NCIS_GS],
           "gs k5 σ1 T4": [NCIS_GS | {"iterations": 4}],
           "gs k5 σ2 T2": [NCIS_GS | {"sigma": 2.0, "iterations": 2}]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crops", type=int, default=8, help="crops per bundled photo (8 × 11 = the eval's 88)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "blend-cpu.json"))
    ap.add_argument("--plot-only", action="store_true", help="measure nothing: redraw the plot from --out")
    a = ap.parse_args(argv)
    if a.plot_only:
        plot(json.loads(Path(a.out).read_text()), Path(a.out).with_suffix(".png"))
        return 0
    torch.manual_seed(0)
    t0 = time.perf_counter()
    clf = load_classifier("efficientnet-lite0")
    net = clf.require_gradients("the blend experiment")
    o = EvalOptions(crops=a.crops)  # the eval's own set and PGD settings, asked rather than restated
    ds = load_eval_set(o, clf)
    x, y = ds.images, ds.labels
    adv = A.pgd(net, x, y, DEFAULT_EPS[0], o.steps, seed=o.seed, batch=o.batch).x_adv  # = the sweep's PGD (8/255)

    def score(clean: torch.Tensor, robust: torch.Tensor) -> dict:
        return {"clean": float((clf.predict(clean, 8) == y).float().mean()),
                "robust_pgd_8": float((clf.predict(robust, 8) == y).float().mean())}

    purifiers = {name: load_purifier({"stages": st, "clamp": True}) for name, st in GS_ONLY.items()}
    purifiers["ncis"] = load_purifier("ncis")
    outputs = {name: (purify_batched(p, x, 8), purify_batched(p, adv, 8)) for name, p in purifiers.items()}
    rows = []
    for name, (pc, pa) in outputs.items():
        for lam in LAMBDAS:
            rows.append({"purifier": name, "z": "input", "lambda": lam,
                         **score(lam * x + (1 - lam) * pc, lam * adv + (1 - lam) * pa)})
    gc, ga = outputs["gs (k5 σ1 T3)"]  # = GS(x̃) of the ncis preset: the BSN's input
    nc, na = outputs["ncis"]
    for lam in (0.25, 0.5, 0.75):
        rows.append({"purifier": "ncis", "z": "bsn_input", "lambda": lam,
                     **score(lam * gc + (1 - lam) * nc, lam * ga + (1 - lam) * na)})
    for r in rows:
        print(f"{r['purifier']:14s} z={r['z']:9s} λ={r['lambda']:.2f}  clean {r['clean']:.1%}  "
              f"robust {r['robust_pgd_8']:.1%}")
    write_json(a.out, {"command": "python benchmarks/blend.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                       "eval": f"{len(x)} crops ({a.crops} × 11 photos, seed 0), PGD 8/255 10 steps purifier-blind",
                       "rows": rows, "wall_s": time.perf_counter() - t0, "machine": cpu_record()})
    plot(json.loads(Path(a.out).read_text()), Path(a.out).with_suffix(".png"))
    print(f"wrote {a.out} and its .png")
    return 0


def plot(report: dict, path: Path) -> None:
    """Clean vs robust agreement, one line per purifier and Z, λ rising along it (λ = 0 ringed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    lines: dict[tuple, list] = {}
    for r in report["rows"]:
        lines.setdefault((r["purifier"], r["z"]), []).append(r)
    base = {r["purifier"]: r for r in report["rows"] if r["lambda"] == 0.0}
    for (name, z), rows in lines.items():
        rows = sorted(rows, key=lambda r: r["lambda"])
        if z == "bsn_input":  # from the ncis point (λ = 0) towards gs (λ = 1)
            rows = [base["ncis"], *rows, base["gs (k5 σ1 T3)"] | {"lambda": 1.0}]
        xs, ys = [100 * r["robust_pgd_8"] for r in rows], [100 * r["clean"] for r in rows]
        label = f"{name}: λ·x̃ + (1−λ)·out" if z == "input" else "λ·GS(x̃) + (1−λ)·BSN(GS(x̃))"
        (ln,) = ax.plot(xs, ys, marker="o", ms=4, label=label, ls="-" if z == "input" else "--")
        if z == "input":
            ax.plot(xs[:1], ys[:1], marker="o", ms=11, mfc="none", color=ln.get_color())
        for r, x, y in zip(rows, xs, ys):
            if 0 < r["lambda"] < 1:
                ax.annotate(f"{r['lambda']:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("robust agreement, PGD 8/255 purifier-blind (%)")
    ax.set_ylabel("clean agreement (%)")
    ax.set_title(f"blending the centre pixel back ({report['eval'].split(' (')[0]}); numbers = λ, ring = λ 0")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
