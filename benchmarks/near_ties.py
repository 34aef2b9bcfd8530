"""Experiment: how far can clean agreement on the bundled crops move under changes no purifier avoids?

    python benchmarks/near_ties.py [--out benchmarks/results/near-ties-cpu.json]

The eval scores a purifier by agreement with the undefended classifier's own clean top-1 (the bundled photos have no
labels). On a near-tie that top-1 flips with any change of the image, so agreement has a ceiling below 100 % that no
purifier design can lift. This measures it on the eval's own crops (88 = 8 × 11, and the subset with clean top-1
probability >= 0.5): the same crops after changes far below anything a purifier does — Gaussian noise of σ 0.5-4/255
(mean over seeds), the 8-bit rounding a saved PNG applies, a one-pixel shift — beside the BSN alone (the mildest
purifier stage), ``gs`` and ``ncis``. Writes JSON and a Markdown table next to it. See docs/presets.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ncis_deploy.cpu import cpu_record
from ncis_deploy.eval.classifiers import load_classifier
from ncis_deploy.eval.core import EvalOptions, load_eval_set, purify_batched, top1_probability
from ncis_deploy.eval.report import eight_bit
from ncis_deploy.fileio import atomic_path, write_json
from ncis_deploy.model.purifier import load_purifier

NOISE = (0.5, 1.0, 2.0, 4.0)  # σ in 1/255
SEEDS = (0, 1, 2, 3)
CONFIDENT = 0.5  # the --min-confidence of docs/presets.md's confident crops


def shift(x: torch.Tensor) -> torch.Tensor:
    """One pixel right and down, reflect-padded: the same picture, framed one pixel differently."""
    return torch.nn.functional.pad(x, (1, 0, 1, 0), mode="reflect")[..., :-1, :-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "near-ties-cpu.json"))
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    clf = load_classifier("efficientnet-lite0")
    o = EvalOptions(crops=8)  # the sweep's 88 crops; the rest of the set and batch as the eval has them
    ds = load_eval_set(o, clf)
    x, y = ds.images, ds.labels
    conf = top1_probability(clf, x, o.batch)
    sure = conf >= CONFIDENT

    def agree(z: torch.Tensor) -> torch.Tensor:
        return (clf.predict(z.clamp(0.0, 1.0), o.batch) == y).float()

    changes: dict[str, torch.Tensor] = {}
    for s in NOISE:
        per_seed = []
        for seed in SEEDS:
            g = torch.Generator().manual_seed(seed)
            per_seed.append(agree(x + torch.randn(x.shape, generator=g) * (s / 255)))
        changes[f"Gaussian noise σ {s:g}/255 (mean of {len(SEEDS)} seeds)"] = torch.stack(per_seed).mean(0)
    changes["8-bit rounding (a saved PNG)"] = agree(eight_bit(x))
    changes["one-pixel shift"] = agree(shift(x))
    for name in ("bsn", "gs", "ncis"):
        pur = load_purifier({"stages": [{"type": "bsn", "iterations": 1}]} if name == "bsn" else name)
        label = "the BSN alone, one pass" if name == "bsn" else f"`{name}` preset"
        changes[label] = agree(purify_batched(pur, x, o.batch))
        print(f"  {label}: {float(changes[label].mean()):.1%}", file=sys.stderr)
    rows = [{"change": k, "all": float(v.mean()), "confident": float(v[sure].mean()),
             "near_ties": float(v[~sure].mean())} for k, v in changes.items()]
    rep = {"command": "python benchmarks/near_ties.py", "classifier": clf.name, "data": ds.source,
           "images": len(ds), "confident_images": int(sure.sum()), "confident_min_probability": CONFIDENT,
           "median_top1_probability": float(conf.quantile(0.5)), "rows": rows,
           "wall_s": round(time.perf_counter() - t0, 1), "machine": cpu_record()}
    write_json(a.out, rep)
    with atomic_path(Path(a.out).with_suffix(".md")) as tmp:
        tmp.write_text(render(rep))
    print(render(rep))
    return 0


def render(rep: dict) -> str:
    n, c = rep["images"], rep["confident_images"]
    lines = [f"# Clean agreement under changes no purifier avoids ({rep['classifier']}, the eval's {n} crops)", "",
             f"Command: `{rep['command']}` ({rep['wall_s']:.0f} s, {rep['machine']['cpu']}). Agreement = the "
             f"classifier's top-1 on the changed clean crop equals its top-1 on the crop itself. Confident = clean "
             f"top-1 probability ≥ {rep['confident_min_probability']:g} ({c} crops); near-ties = the other {n - c} "
             f"(median top-1 probability of all {n}: {rep['median_top1_probability']:.2f}).", "",
             f"| change | all {n} | {c} confident | {n - c} near-ties |", "|---|---:|---:|---:|"]
    lines += [f"| {r['change']} | {r['all']:.1%} | {r['confident']:.1%} | {r['near_ties']:.1%} |" for r in rep["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
