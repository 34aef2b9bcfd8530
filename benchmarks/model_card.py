"""Measure a trained BSN on the held-out photos and write the model card beside the shipped weights.

    python benchmarks/model_card.py runs/default --ship

Hold-out: the two scikit-learn photos (china, flower; 427×640), never used in training, with Gaussian noise
σ = 8/255 (fixed seeds, clipped to [0, 1]) as a stand-in for a zero-mean perturbation. Every number is measured here;
nothing is estimated.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

import ncis_deploy
from ncis_deploy import load_purifier
from ncis_deploy.data import BUNDLED_HOLDOUT, ImageSet
from ncis_deploy.fileio import write_json
from ncis_deploy.model.purifier import WEIGHTS_NAME, default_weights_path
from ncis_deploy.model.smoothing import smooth_fused
from ncis_deploy.quality import HOLDOUT_NOISE, gs_sweep, mean_psnr, noisy_pairs

ROOT = Path(__file__).resolve().parents[1]
TRAIN_FLAGS = ("data", "out", "steps", "crop", "batch", "layers", "filters", "lr", "seed", "device", "noise", "input",
               "eval_every", "checkpoint_every")


def train_command(cfg: dict) -> str:
    args = ["ncis-deploy", "train"]
    for k in TRAIN_FLAGS:
        if cfg.get(k) is not None:
            args += [f"--{k.replace('_', '-')}", str(cfg[k])]
    return shlex.join(args)


def machine() -> dict:
    import os

    from ncis_deploy.doctor import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="directory written by `ncis-deploy train`")
    ap.add_argument("--ship", action="store_true", help="copy the weights into the package and write the card there")
    args = ap.parse_args()

    summary = json.loads((args.run / "train_summary.json").read_text())
    purifier = load_purifier(args.run)
    pairs = noisy_pairs(ImageSet.bundled("holdout").images, HOLDOUT_NOISE, seed=0)
    t0 = time.perf_counter()
    sweep = gs_sweep(pairs)
    best = sweep[0]
    bsn = purifier.bsn
    gs_cfg = purifier.config["stages"][0]
    rows = {
        "noisy input": mean_psnr(lambda x: x, pairs),
        f"best GS (k={best['kernel_size']}, sigma={best['sigma']}, T={best['iterations']})": best["psnr"],
        "one BSN pass": mean_psnr(bsn, pairs),
        f"ncis preset (GS k={gs_cfg['kernel_size']}, sigma={gs_cfg['sigma']}, T={gs_cfg['iterations']} + 1 BSN)":
            mean_psnr(purifier, pairs),
        "two BSN passes": mean_psnr(lambda x: bsn(bsn(x).clamp(0, 1)), pairs),
        "best GS + one BSN pass": mean_psnr(
            lambda x: bsn(smooth_fused(x, best["kernel_size"], best["sigma"], best["iterations"])), pairs),
    }
    per_image = {name: {"noisy": mean_psnr(lambda x: x, [p]), "bsn": mean_psnr(bsn, [p]), "ncis": mean_psnr(purifier, [p])}
                 for name, p in zip(BUNDLED_HOLDOUT, pairs)}
    card = {
        "weights": "bsn_default.safetensors",
        "architecture": {"name": "FBI-Net", **bsn.arch, "parameters": sum(p.numel() for p in bsn.parameters()),
                         "receptive_radius": bsn.receptive_radius()},
        "training": {"command": train_command(summary["config"]), "seed": summary["config"]["seed"],
                     "steps": summary["steps"], "device": summary["config"]["device"],
                     "wall_time_s": round(summary["wall_s"], 1), "images_per_s": round(summary["images_per_s"], 2),
                     "final_loss": summary["final_loss"], "data": "bundled scikit-image photos (9)"},
        "holdout": {"images": list(BUNDLED_HOLDOUT), "noise_sigma": "8/255", "clipped": True, "noise_seed": 0,
                    "psnr_db": rows, "per_image_psnr_db": per_image, "gs_sweep_top5": sweep[:5],
                    "gs_sweep_grid": {"kernel_size": [3, 5], "sigma": [0.5, 1.0, 2.0], "iterations": [1, 2, 3, 5, 10]},
                    "measure_s": round(time.perf_counter() - t0, 1)},
        "measured_on": machine(),
        "ncis_deploy_version": ncis_deploy.__version__,
    }
    dest = default_weights_path().parent if args.ship else args.run
    if args.ship:
        shutil.copyfile(args.run / WEIGHTS_NAME, default_weights_path())
    write_json(dest / "model_card.json", card)
    (dest / "MODEL_CARD.md").write_text(render(card))
    print(render(card))


def render(card: dict) -> str:
    a, t, h = card["architecture"], card["training"], card["holdout"]
    lines = [
        "# Model card: the shipped BSN weights (`bsn_default.safetensors`)", "",
        "Written by `benchmarks/model_card.py` from a real training run and real measurements; regenerate, don't edit.", "",
        "## Network",
        f"FBI-Net blind-spot network, {a['channels']} channels, L = {a['layers']} layers, F = {a['filters']} filters, "
        f"{a['parameters']:,} parameters, receptive radius {a['receptive_radius']} px.", "",
        "## Training",
        f"- command: `{t['command']}`",
        f"- seed {t['seed']}, {t['steps']} steps on {t['device']}, wall time {t['wall_time_s']} s "
        f"({t['images_per_s']} crops/s), final loss {t['final_loss']:.5f}",
        f"- data: {t['data']}; self-supervised (blind-spot MSE to the input), input-noise augmentation as in the command",
        f"- machine: {card['measured_on']['cpu']}, {card['measured_on']['cores']} cores, torch {card['measured_on']['torch']}", "",
        "## Hold-out PSNR",
        f"Photos {', '.join(h['images'])} (never trained on), full size, Gaussian noise σ = {h['noise_sigma']} "
        f"(seeded, clipped to [0, 1]); PSNR to the clean photo, mean over the photos.", "",
        "| purifier | PSNR (dB) |", "|---|---:|",
        *[f"| {k} | {v:.2f} |" for k, v in h["psnr_db"].items()], "",
        "GS sweep (kernel 3/5 × sigma 0.5/1/2 × iterations 1/2/3/5/10), best five:", "",
        "| kernel | sigma | iterations | PSNR (dB) |", "|---:|---:|---:|---:|",
        *[f"| {r['kernel_size']} | {r['sigma']} | {r['iterations']} | {r['psnr']:.2f} |" for r in h["gs_sweep_top5"]], "",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
