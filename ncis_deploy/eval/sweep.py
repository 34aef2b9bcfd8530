"""``ncis-deploy eval --sweep``: clean vs purifier-blind robust agreement over GS (kernel, sigma, iterations) and
BSN iterations, to choose the ``gs`` and ``ncis`` presets by measurement.

Purifier-blind attacks do not depend on the purifier, so the adversarial set is made once (PGD on the classifier)
and each configuration costs only two purifications and two classifications; that is what makes a grid affordable
on a CPU. BSN counts share their passes: GS + bsn×b is GS + bsn×(b−1) followed by one more clamped pass, so
``bsn_iterations`` 0, 1, 2 cost two BSN passes per GS setting, not three. The adaptive figure is *not* swept (it
would need one attack per configuration): run plain ``eval`` on the chosen configuration for that.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable

import torch

from ncis_deploy.cpu import cpu_record
from ncis_deploy.errors import UserError
from ncis_deploy.eval import attacks as A
from ncis_deploy.eval.classifiers import load_classifier
from ncis_deploy.eval.core import EvalOptions, _fmt_eps, check_options, load_eval_set, purify_batched

DEFAULT_EPS = (8 / 255,)  # the sweep's one ε (it uses the first given): its axes are the purifier's parameters
DEFAULT_GRID = {"kernel_size": (3, 5), "sigma": (0.5, 1.0, 2.0), "iterations": (1, 2, 5),
                "bsn_iterations": (0, 1, 2)}
_GRID_TYPES = {"kernel_size": int, "sigma": float, "iterations": int, "bsn_iterations": int}


def parse_grid(specs) -> dict:
    """``["kernel_size=3,5", "sigma=1"]`` → ``{"kernel_size": (3, 5), "sigma": (1.0,)}``; keys not given keep
    :data:`DEFAULT_GRID`. Values are checked by the purifier config itself when the grid is built."""
    grid = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in _GRID_TYPES:
            raise UserError(f"--grid {spec!r}: use KEY=V1,V2,... with KEY one of {', '.join(_GRID_TYPES)}")
        try:
            grid[key] = tuple(dict.fromkeys(_GRID_TYPES[key](v) for v in values.split(",") if v.strip()))
        except ValueError:
            raise UserError(f"--grid {spec!r}: {key} takes {_GRID_TYPES[key].__name__} values, e.g. "
                            f"{key}={'1,2' if _GRID_TYPES[key] is int else '0.5,1'}") from None
        if not grid[key]:
            raise UserError(f"--grid {spec!r}: give at least one value")
    return grid


def _gs_settings(grid: dict) -> list[dict]:
    """GS stages of the grid; ``iterations`` 0 (no smoothing: the BSN alone) once, whatever the kernel and sigma."""
    out = [{"type": "gs", "kernel_size": k, "sigma": float(s), "iterations": t}
           for k, s, t in itertools.product(grid["kernel_size"], grid["sigma"], grid["iterations"])]
    first_t0 = next((g for g in out if g["iterations"] == 0), None)
    return [g for g in out if g["iterations"] or g is first_t0]


def _config(gs: dict, bsn: int) -> dict:
    return {"stages": ([gs] if gs["iterations"] else []) + ([{"type": "bsn", "iterations": bsn}] if bsn else [])}


def _pairs(grid: dict) -> list[tuple[dict, int]]:
    """(GS stage, BSN count) of every configuration but "none" (which GS T0 + bsn×0 would repeat)."""
    return [(gs, b) for gs in _gs_settings(grid) for b in grid["bsn_iterations"] if gs["iterations"] or b]


def grid_configs(grid: dict) -> list[dict]:
    return [{"stages": []}] + [_config(gs, b) for gs, b in _pairs(grid)]


def purify_bsn_counts(gs_raw, bsn_pass, x: torch.Tensor, counts, batch: int) -> dict[int, tuple[torch.Tensor, float]]:
    """GS + bsn×b for every b in ``counts``, sharing the passes: b → (output, seconds that config alone would take).
    ``gs_raw`` is the GS stage without the final clamp and ``bsn_pass`` one clamped BSN pass, so each output equals
    ``Purifier.forward`` of that config exactly."""
    t0 = time.perf_counter()
    z = purify_batched(gs_raw, x, batch)
    out = {0: (z.clamp(0.0, 1.0), time.perf_counter() - t0)}
    for b in range(1, max(counts) + 1):
        z = purify_batched(bsn_pass, z, batch)
        out[b] = (z, time.perf_counter() - t0)
    return {b: out[b] for b in counts}


def run_sweep(o: EvalOptions, grid: dict | None = None, progress: Callable[[str], None] | None = None,
              command: str | None = None) -> dict:
    from ncis_deploy.model.purifier import load_purifier, normalize_config

    say = progress or (lambda m: None)
    check_options(o)
    grid = {**DEFAULT_GRID, **(grid or {})}
    for cfg in grid_configs(grid):
        normalize_config(cfg)  # a bad grid value fails here, before the attack, with the stage's own message
    t0 = time.perf_counter()
    clf = load_classifier(o.classifier)
    clf.require_gradients("the sweep's purifier-blind PGD")
    ds = load_eval_set(o, clf)
    eps = o.eps[0]
    say(f"sweep: PGD {_fmt_eps(eps)} ({o.steps} steps) on the classifier, {len(ds)} images")
    adv = A.pgd(clf.module, ds.images, ds.labels, eps, o.steps, seed=o.seed, batch=o.batch).x_adv
    rows = []
    n_configs = len(grid_configs(grid))

    def record(cfg, clean_x, adv_x, seconds):
        clean = float((clf.predict(clean_x, o.batch) == ds.labels).float().mean())
        robust = float((clf.predict(adv_x, o.batch) == ds.labels).float().mean())
        rows.append({"config": cfg, "label": label(cfg), "clean": clean, "robust": robust, "seconds": seconds})
        say(f"[{len(rows)}/{n_configs}] {label(cfg)}: clean {clean:.1%}, robust {robust:.1%}")

    record({"stages": []}, ds.images, adv, 0.0)
    counts = grid["bsn_iterations"]
    bsn_pass = load_purifier({"stages": [{"type": "bsn", "iterations": 1}]}, weights=o.weights) if max(counts) \
        else None
    for gs in _gs_settings(grid):
        gs_raw = load_purifier({"stages": [gs], "clamp": False})
        clean, attacked = (purify_bsn_counts(gs_raw, bsn_pass, x, counts, o.batch) for x in (ds.images, adv))
        for b in counts:
            if gs["iterations"] or b:
                record(_config(gs, b), clean[b][0], attacked[b][0], round(clean[b][1] + attacked[b][1], 1))
    return {"kind": "sweep", "command": command, "classifier": clf.name, "metric": ds.metric,
            "data": {"source": ds.source, "images": len(ds)}, "attack": {"name": "pgd", "threat_model":
            "purifier-blind", "eps": eps, "eps_label": _fmt_eps(eps), "steps": o.steps, "seed": o.seed},
            "grid": {k: list(v) for k, v in grid.items()}, "rows": rows,
            "bsn_vs_gs": bsn_vs_gs(rows),
            "wall_s": round(time.perf_counter() - t0, 1), "torch_threads": torch.get_num_threads(),
            "machine": cpu_record()}  # the seconds column is a speed figure: it carries its CPU


def label(cfg: dict) -> str:
    if not cfg["stages"]:
        return "none"
    parts = []
    for s in cfg["stages"]:
        parts.append(f"gs k{s['kernel_size']} σ{s['sigma']:g} T{s['iterations']}" if s["type"] == "gs"
                     else f"bsn×{s['iterations']}")
    return " + ".join(parts)


def frontier(rows: list[dict]) -> list[dict]:
    """The measured trade-off curve: rows no other row beats on clean and robust at once (ties keep both), by
    falling clean."""
    def beaten(r):
        return any(o["clean"] >= r["clean"] and o["robust"] >= r["robust"]
                   and (o["clean"] > r["clean"] or o["robust"] > r["robust"]) for o in rows)

    return sorted((r for r in rows if not beaten(r)), key=lambda r: (-r["clean"], r["robust"]))


def frontier_labels(rows: list[dict]) -> dict[tuple[float, float], str]:
    """One label per frontier point: settings that measure the same share it ("a = b"), since two labels printed on
    the same spot cannot be read."""
    same: dict[tuple[float, float], list[str]] = {}
    for r in frontier(rows):
        same.setdefault((r["clean"], r["robust"]), []).append(r["label"])
    return {xy: " = ".join(labels) for xy, labels in same.items()}


def _bsn_count(cfg: dict) -> int:
    return sum(s["iterations"] for s in cfg["stages"] if s["type"] == "bsn")


def bsn_vs_gs(rows: list[dict]) -> dict | None:
    """What the BSN adds to smoothing, in the two ways the rows can answer it: the largest clean gain of a GS + BSN
    setting over the best GS-alone setting that is at least as robust, and each family's most robust point. A GS +
    BSN setting more robust than every GS-alone one has nothing to compare with at equal robustness: it is listed in
    ``above_gs_ceiling``, not given a gain. The BSN alone (no GS stage) is in neither family, and "none" counts as GS
    with no iterations. None when the rows lack one of the two families."""
    def has(r, kind):
        return any(st["type"] == kind and st["iterations"] for st in r["config"]["stages"])

    gs = [r for r in rows if not has(r, "bsn")]
    bsn = [r for r in rows if has(r, "bsn") and has(r, "gs")]
    if not gs or not bsn:
        return None
    best_gain = None
    for r in bsn:
        rivals = [g for g in gs if g["robust"] >= r["robust"]]
        if rivals:
            rival = max(rivals, key=lambda g: (g["clean"], g["robust"]))
            gain = r["clean"] - rival["clean"]
            if best_gain is None or gain > best_gain["gain"]:
                best_gain = {"gain": gain, "setting": r["label"], "clean": r["clean"], "robust": r["robust"],
                             "gs_setting": rival["label"], "gs_clean": rival["clean"], "gs_robust": rival["robust"]}
    top_gs, top_bsn = (max(f, key=lambda r: (r["robust"], r["clean"])) for f in (gs, bsn))
    return {"largest_gain_at_equal_robust": best_gain,
            "most_robust_gs_alone": {k: top_gs[k] for k in ("label", "clean", "robust")},
            "most_robust_with_bsn": {k: top_bsn[k] for k in ("label", "clean", "robust")},
            "above_gs_ceiling": sorted(r["label"] for r in bsn if r["robust"] > top_gs["robust"])}


def _render_bsn_vs_gs(c: dict, m: str) -> list[str]:
    g, a, b = c["largest_gain_at_equal_robust"], c["most_robust_gs_alone"], c["most_robust_with_bsn"]
    lines = ["", f"**GS + BSN vs GS alone.** Most robust GS alone: {a['label']} {a['clean']:.1%} / {a['robust']:.1%}; "
             f"most robust GS + BSN: {b['label']} {b['clean']:.1%} / {b['robust']:.1%} (clean / robust {m})."]
    if g is not None:
        lines.append(f"Largest clean gain at equal robustness: {g['gain'] * 100:+.1f} points ({g['setting']} "
                     f"{g['clean']:.1%} / {g['robust']:.1%} against the best GS alone at least as robust, "
                     f"{g['gs_setting']} {g['gs_clean']:.1%} / {g['gs_robust']:.1%}).")
    if c["above_gs_ceiling"]:
        lines.append(f"{len(c['above_gs_ceiling'])} GS + BSN setting(s) are more robust than every GS-alone setting: "
                     "no GS alone to compare them with at equal robustness.")
    return lines


def render_sweep(rep: dict) -> str:
    m = rep["metric"]
    a = rep["attack"]
    front = {r["label"] for r in frontier(rep["rows"])}
    lines = [f"Sweep: clean vs purifier-blind robust {m} of {rep['classifier']} on {rep['data']['images']} images "
             f"(PGD {a['eps_label']}, {a['steps']} steps, made on the classifier alone)", ""]
    if rep.get("command"):
        lines += [f"Command: `{rep['command']}`", ""]
    lines += [f"| purifier | clean {m} | robust {m} | frontier | s |", "|---|---|---|---|---|"]
    for r in sorted(rep["rows"], key=lambda r: (-r["robust"], -r["clean"])):
        mark = "◆" if r["label"] in front else ""
        lines.append(f"| {r['label']} | {r['clean']:.1%} | {r['robust']:.1%} | {mark} | {r['seconds']} |")
    n = rep["data"]["images"]
    where = f" on {rep['machine']['cpu']} ({rep['machine']['cores']} cores)" if rep.get("machine") else ""
    lines += ["", f"◆ = on the frontier (no other setting is as good on both clean and robust {m} and better on "
              f"one). One image = {1 / n:.1%}. s = purification time of that setting alone (clean + adversarial "
              f"sets; noisy on a shared machine). Wall time {rep['wall_s']:.0f} s with {rep['torch_threads']} torch "
              f"threads{where}."]
    if (c := bsn_vs_gs(rep["rows"])) is not None:
        lines += _render_bsn_vs_gs(c, m)
    return "\n".join(lines)


def preset_rows(rows: list[dict]) -> dict[str, dict]:
    """The sweep rows whose stages are exactly a preset's (``gs``, ``ncis``), by preset name."""
    from ncis_deploy.model.purifier import PRESETS

    out = {}
    for name, preset in PRESETS.items():
        stages = [dict(st) for st in preset.stages]
        match = [r for r in rows if stages and r["config"]["stages"] == stages]
        if match:
            out[name] = match[0]
    return out


def plot_sweep(rep: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    colors = {0: "tab:blue", 1: "tab:red", 2: "tab:purple"}
    front = frontier(rep["rows"])
    for r in rep["rows"]:
        ax.scatter(r["clean"], r["robust"], c=colors.get(_bsn_count(r["config"]), "black"), s=18)
    # only the frontier is labelled: the other points crowd each other; the table names every one
    for (clean, robust), text in frontier_labels(rep["rows"]).items():
        ax.annotate(text, (clean, robust), fontsize=6, xytext=(4, 2), textcoords="offset points")
    ax.plot([r["clean"] for r in front], [r["robust"] for r in front], color="grey", linewidth=0.8, zorder=0)
    for name, r in preset_rows(rep["rows"]).items():  # where the shipped presets sit among the settings
        ax.scatter(r["clean"], r["robust"], s=90, facecolors="none", edgecolors="black", linewidths=1.2)
        ax.annotate(f"{name} preset", (r["clean"], r["robust"]), fontsize=7, fontweight="bold", xytext=(6, -10),
                    textcoords="offset points")
    ax.set_xlabel(f"clean {rep['metric']}")
    ax.set_ylabel(f"purifier-blind robust {rep['metric']} ({rep['attack']['eps_label']})")
    counts = {_bsn_count(r["config"]) for r in rep["rows"]}
    key = "GS alone: every setting in blue" if counts <= {0} else \
        "GS (blue), + 1 BSN pass (red), + 2 passes (purple); no GS T: the BSN alone"  # a GS-only grid has no red
    ax.set_title(f"{key}\ngrey: the frontier (labelled); ringed: the presets; {rep['data']['images']} images",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
