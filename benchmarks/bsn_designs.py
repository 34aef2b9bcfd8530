"""Measure BSN designs and trainer settings against each other and against the zero-parameter baselines.

    python benchmarks/bsn_designs.py --steps 400 --out benchmarks/results/bsn-designs-cpu

Each design is a short training run of the same size (same seed, crops, steps) that differs in one or two choices;
the hold-out curve (china + flower, full size, σ = 8/255) is logged during training, and at the end each trained
network is measured as the BSN alone on noisy photos and as the BSN after the ncis preset's GS (the setting is
recorded with the baselines). The same run times
the live-tap trainer against the masked dense one (interleaved, same process). Writes JSON + a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ncis_deploy.data import ImageSet
from ncis_deploy.cpu import cpu_record
from ncis_deploy.eval.sweep import label
from ncis_deploy.fileio import write_json
from ncis_deploy.model.bsn import FBINet, bilateral
from ncis_deploy.train import LOG_NAME, TrainConfig, make_batch, train

# one or two choices apart from the next; "old" is the trainer that produced the first shipped weights
DESIGNS: dict[str, dict] = {
    "old: plain FBI-Net, self target, no augmentation, step lr": dict(baseline="none", target="self", input="raw",
                                                                     augment=False, schedule="step"),
    "plain FBI-Net + augmentation + cosine": dict(baseline="none", target="self", input="raw"),
    "mean4 residual, self target": dict(baseline="mean4", target="self", input="raw"),
    "mean4 residual, clean target": dict(baseline="mean4", target="clean", input="raw"),
    "mean4 residual, GS input → clean (NCIS)": dict(baseline="mean4", target="clean", input="gs"),
    "mean4 residual, mixed input → clean": dict(baseline="mean4", target="clean", input="mixed"),
    "bilateral residual, clean target": dict(baseline="bilateral", target="clean", input="raw"),
    "bilateral residual, GS input → clean": dict(baseline="bilateral", target="clean", input="gs"),
    "bilateral residual, mixed input → clean": dict(baseline="bilateral", target="clean", input="mixed"),
}


def measure_full(net_dir: str, gs_setting: dict) -> dict:
    """The trained BSN on the full-size hold-out photos: alone, and after ``gs_setting`` (the in-training curve
    uses centre crops; the design table compares full-size figures measured the same way for every design)."""
    from ncis_deploy.model.purifier import load_purifier
    from ncis_deploy.model.smoothing import smooth_fused
    from ncis_deploy.quality import holdout_pairs, mean_psnr

    pairs = holdout_pairs()
    bsn = load_purifier(net_dir).bsn.eval()
    k, s, t = (gs_setting[n] for n in ("kernel_size", "sigma", "iterations"))
    return {"bsn": mean_psnr(bsn, pairs), "ncis": mean_psnr(lambda x: bsn(smooth_fused(x, k, s, t)), pairs)}


def time_taps(cfg: TrainConfig, steps: int = 12, rounds: int = 3) -> dict:
    """steps/s of the live-tap and the masked dense forward+backward, interleaved in rounds (noisy machines)."""
    images = ImageSet.bundled("train")
    torch.manual_seed(0)
    net = FBINet(3, cfg.layers, cfg.filters, baseline="mean4")
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    batches = [make_batch(images, cfg, s) for s in range(steps)]
    rates: dict[str, list[float]] = {"live": [], "dense": []}
    for _ in range(rounds):
        for taps in ("dense", "live"):
            net.taps = taps
            t0 = time.perf_counter()
            for x, y in batches:
                loss = F.mse_loss(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            rates[taps].append(steps / (time.perf_counter() - t0))
    med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    return {"steps_per_s": med, "all_rounds": rates, "live_over_dense": med["live"] / med["dense"],
            "batch": cfg.batch, "crop": cfg.crop, "layers": cfg.layers, "filters": cfg.filters}


def _neighbours(x: torch.Tensor, r: int) -> torch.Tensor:
    """[..., H, W, K]: the (2r+1)² − 1 neighbours of every pixel (reflect-padded), centre excluded."""
    p = F.pad(x, (r, r, r, r), mode="reflect")
    h, w = x.shape[-2:]
    return torch.stack([p[..., r + dy : r + dy + h, r + dx : r + dx + w] for dy in range(-r, r + 1)
                        for dx in range(-r, r + 1) if (dy, dx) != (0, 0)], -1)


def linear_blind_predictors(radii=(1, 2, 3), samples: int = 200_000) -> dict:
    """The best *linear* blind predictors (least squares over the (2r+1)² − 1 neighbours, shared by the channels),
    fitted on the noisy training photos and, as an upper bound no training can beat, on the hold-out photos
    themselves: how much there is to gain over the 4-neighbour mean without the centre pixel."""
    from ncis_deploy.quality import HOLDOUT_NOISE, holdout_pairs, noisy_pairs, psnr

    pairs = holdout_pairs()
    train_pairs = noisy_pairs(ImageSet.bundled("train").images, HOLDOUT_NOISE, seed=100)
    rng = torch.Generator().manual_seed(0)
    out = {}
    for r in radii:
        k = (2 * r + 1) ** 2 - 1
        a, b = [], []
        for clean, noisy in train_pairs:
            f, y = _neighbours(noisy, r).reshape(-1, k).double(), clean.reshape(-1).double()
            idx = torch.randperm(len(y), generator=rng)[:samples]
            a.append(f[idx])
            b.append(y[idx])
        w = torch.linalg.lstsq(torch.cat(a), torch.cat(b)[:, None]).solution
        fitted, oracle = [], []
        for clean, noisy in pairs:
            f = _neighbours(noisy, r).reshape(-1, k).double()
            fitted.append(psnr((f @ w).reshape(clean.shape).clamp(0, 1), clean))
            wo = torch.linalg.lstsq(f, clean.reshape(-1, 1).double()).solution
            oracle.append(psnr((f @ wo).reshape(clean.shape).clamp(0, 1), clean))
        out[f"{2 * r + 1}x{2 * r + 1}"] = {"fitted_on_training_photos": fitted, "fitted_on_holdout_itself": oracle}
    return {"images": ["china", "flower"], "noise": "8/255, seed 0", "predictors": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--layers", type=int, default=17)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--only", default=None, help="comma-separated indices of DESIGNS to run")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bsn-designs-cpu"))
    ap.add_argument("--linear-only", action="store_true",
                    help="only (re)measure the linear blind predictors and add them to an existing --out JSON")
    args = ap.parse_args()
    if args.linear_only:
        report = json.loads(args.out.with_suffix(".json").read_text())
        report["linear_blind_predictors"] = linear_blind_predictors()
        report["linear_blind_predictors"]["command"] = " ".join(["python", *sys.argv])
        write_json(args.out.with_suffix(".json"), report)
        print(json.dumps(report["linear_blind_predictors"], indent=1))
        return
    base = dict(steps=args.steps, filters=args.filters, layers=args.layers, crop=args.crop, batch=args.batch,
                eval_every=max(1, args.steps // 4), checkpoint_every=args.steps)
    names = list(DESIGNS)
    if args.only:  # add to the existing report: same protocol, the other designs' rows kept
        names = [names[int(i)] for i in args.only.split(",")]
        report = json.loads(args.out.with_suffix(".json").read_text())
        if report["train"] != base:
            raise SystemExit(f"--only: {args.out}.json was trained with {report['train']}, not {base}")
        report.setdefault("commands", [report["command"]]).append(" ".join(["python", *sys.argv]))
    else:
        report = {"command": " ".join(["python", *sys.argv]), **cpu_record(), "train": base,
                  "trainer_speed": time_taps(TrainConfig(**base)), "designs": {},
                  "linear_blind_predictors": linear_blind_predictors()}
        print(json.dumps(report["trainer_speed"]), flush=True)
    for name in names:
        with tempfile.TemporaryDirectory() as d:
            s = train(TrainConfig(**base, **DESIGNS[name], out=d), progress=False)
            log = [json.loads(ln) for ln in (Path(d) / LOG_NAME).read_text().splitlines()]
            report.setdefault("baselines", log[0]["baselines"])
            full = measure_full(d, report["baselines"]["gs_ncis_setting"])
        curve = [{k: r[k] for k in ("step", "holdout_psnr", "holdout_psnr_ncis")} for r in log if "holdout_psnr" in r]
        report["designs"][name] = {"settings": DESIGNS[name], "curve": curve, "wall_s": s["wall_s"], **full,
                                   "curve_crop": log[0].get("holdout_crop")}
        print(f"{name}: bsn {full['bsn']:.2f} dB, ncis {full['ncis']:.2f} dB, {s['wall_s']:.0f} s", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out.with_suffix(".json"), report)
    if "bilateral" not in report["baselines"]:  # reports from before the blind bilateral existed
        from ncis_deploy.quality import holdout_pairs, mean_psnr

        report["baselines"]["bilateral"] = mean_psnr(bilateral, holdout_pairs())
        write_json(args.out.with_suffix(".json"), report)
    plot(report, args.out.with_suffix(".png"))


END_KEY = {"holdout_psnr": "bsn", "holdout_psnr_ncis": "ncis"}  # curve key → the design's full-size end figure


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=False)
    b = report["baselines"]
    for ax, key, title, lines in (
            (axes[0], "holdout_psnr", "BSN alone on noisy photos",
             tuple((k, t) for k, t in (("noisy", "noisy input"), ("mean4", "4-neighbour mean"),
                                       ("bilateral", "blind bilateral"), ("best_gs", "best GS")) if k in b)),
            (axes[1], "holdout_psnr_ncis", f"BSN after {label({'stages': [b['gs_ncis_setting']]})}",
             (("gs_ncis", "GS alone"), ("noisy", "noisy input")))):
        for name, d in report["designs"].items():
            if d.get("curve_crop"):  # its curve was logged on centre crops: only its full-size end point compares
                ax.plot([d["curve"][-1]["step"]], [d[END_KEY[key]]],
                        marker="*", ms=14, ls="none", label=f"{name} (end, full size)")
            else:
                ax.plot([c["step"] for c in d["curve"]], [c[key] for c in d["curve"]], marker="o", label=name)
        for k, text in lines:
            ax.axhline(b[k], ls="--", lw=1, color="grey")
            ax.annotate(f"{text} {b[k]:.2f}", (0, b[k]), fontsize=8, color="dimgrey", va="bottom")
        # zoom on the baselines: the plain FBI-Net curves start near 7 dB and would flatten everything else
        lo = min(b["mean4"], b["gs_ncis"]) - 2.5
        ax.set_ylim(lo, max(b["noisy"], b["best_gs"]) + 0.5)
        below = [n for n, d in report["designs"].items()
                 if (d[END_KEY[key]] if d.get("curve_crop") else d["curve"][-1][key]) < lo]
        if below:
            ax.annotate(f"below the plot at the end: {len(below)} design(s), see the JSON", (0.01, 0.01),
                        xycoords="axes fraction", fontsize=8, color="dimgrey")
        ax.set(title=title, xlabel="training step", ylabel="hold-out PSNR (dB), china + flower, σ = 8/255")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.0, 0.9))  # the empty band between the lines
    t = report["train"]
    fig.suptitle(f"BSN designs, F={t['filters']} L={t['layers']}, crop {t['crop']}, batch {t['batch']}, "
                 f"{t['steps']} steps; {report['cpu']}, {report['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
