"""``ncis-deploy eval --sweep``: clean vs purifier-blind robust agreement over GS (kernel, sigma, iterations) and
BSN iterations, to choose the ``gs`` and ``ncis`` presets by measurement.

Purifier-blind attacks do not depend on the purifier, so the adversarial set is made once (PGD on the classifier)
and each configuration costs only two purifications and two classifications; that is what makes a grid affordable
on a CPU. The adaptive figure is *not* swept (it would need one attack per configuration): run plain ``eval`` on the
chosen configuration for that.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable

import torch

from ncis_deploy.eval import attacks as A
from ncis_deploy.eval.classifiers import load_classifier
from ncis_deploy.eval.core import EvalOptions, _fmt_eps, _purify, check_options
from ncis_deploy.eval.dataset import bundled, check_labels, from_folder

DEFAULT_GRID = {"kernel_size": (3, 5), "sigma": (0.5, 1.0, 2.0), "iterations": (1, 2, 5), "bsn_iterations": (0, 1)}


def grid_configs(grid: dict) -> list[dict]:
    out = []
    for k, s, t, b in itertools.product(grid["kernel_size"], grid["sigma"], grid["iterations"], grid["bsn_iterations"]):
        stages = [{"type": "gs", "kernel_size": k, "sigma": s, "iterations": t}]
        if b:
            stages.append({"type": "bsn", "iterations": b})
        out.append({"stages": stages})
    return [{"stages": []}] + out


def run_sweep(o: EvalOptions, grid: dict | None = None, progress: Callable[[str], None] | None = None,
              command: str | None = None) -> dict:
    from ncis_deploy.model.purifier import load_purifier

    say = progress or (lambda m: None)
    check_options(o)
    grid = {**DEFAULT_GRID, **(grid or {})}
    t0 = time.perf_counter()
    clf = load_classifier(o.classifier)
    clf.require_gradients("the sweep's purifier-blind PGD")
    ds = from_folder(o.data, o.labels, o.size) if (o.data or o.labels) else bundled(o.crops, o.size, o.seed)
    if o.images:
        ds = ds.subset(o.images)
    check_labels(ds, clf.num_classes, clf.name)
    if ds.labels is None:
        ds.labels = clf.predict(ds.images, o.batch)
    eps = o.eps[0]
    say(f"sweep: PGD {_fmt_eps(eps)} ({o.steps} steps) on the classifier, {len(ds)} images")
    adv = A.pgd(clf.module, ds.images, ds.labels, eps, o.steps, seed=o.seed, batch=o.batch).x_adv
    rows = []
    configs = grid_configs(grid)
    for i, cfg in enumerate(configs):
        pur = load_purifier(cfg, weights=o.weights)
        t = time.perf_counter()
        clean = float((clf.predict(_purify(pur, ds.images, o.batch), o.batch) == ds.labels).float().mean())
        robust = float((clf.predict(_purify(pur, adv, o.batch), o.batch) == ds.labels).float().mean())
        rows.append({"config": cfg, "label": label(cfg), "clean": clean, "robust": robust,
                     "seconds": round(time.perf_counter() - t, 1)})
        say(f"[{i + 1}/{len(configs)}] {label(cfg)}: clean {clean:.1%}, robust {robust:.1%}")
    return {"kind": "sweep", "command": command, "classifier": clf.name, "metric": ds.metric,
            "data": {"source": ds.source, "images": len(ds)}, "attack": {"name": "pgd", "threat_model":
            "purifier-blind", "eps": eps, "eps_label": _fmt_eps(eps), "steps": o.steps, "seed": o.seed},
            "grid": {k: list(v) for k, v in grid.items()}, "rows": rows,
            "wall_s": round(time.perf_counter() - t0, 1), "torch_threads": torch.get_num_threads()}


def label(cfg: dict) -> str:
    if not cfg["stages"]:
        return "none"
    parts = []
    for s in cfg["stages"]:
        parts.append(f"gs k{s['kernel_size']} σ{s['sigma']:g} T{s['iterations']}" if s["type"] == "gs"
                     else f"bsn×{s['iterations']}")
    return " + ".join(parts)


def render_sweep(rep: dict) -> str:
    m = rep["metric"]
    a = rep["attack"]
    lines = [f"Sweep: clean vs purifier-blind robust {m} of {rep['classifier']} on {rep['data']['images']} images "
             f"(PGD {a['eps_label']}, {a['steps']} steps, made on the classifier alone)", "",
             f"| purifier | clean {m} | robust {m} | s |", "|---|---|---|---|"]
    for r in sorted(rep["rows"], key=lambda r: -(r["clean"] + r["robust"])):
        lines.append(f"| {r['label']} | {r['clean']:.1%} | {r['robust']:.1%} | {r['seconds']} |")
    return "\n".join(lines)


def plot_sweep(rep: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rep["rows"]:
        bsn = any(s["type"] == "bsn" for s in r["config"]["stages"])
        ax.scatter(r["clean"], r["robust"], c="tab:red" if bsn else "tab:blue", s=18)
        ax.annotate(r["label"], (r["clean"], r["robust"]), fontsize=5)
    ax.set_xlabel(f"clean {rep['metric']}")
    ax.set_ylabel(f"purifier-blind robust {rep['metric']} ({rep['attack']['eps_label']})")
    ax.set_title("GS (blue) and GS + BSN (red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
