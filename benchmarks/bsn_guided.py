"""Experiment: fine-tune the shipped BSN against the classifier (an HGD-style logit loss) and measure what it buys.

    python benchmarks/bsn_guided.py [--steps 300] [--out benchmarks/results/bsn-guided-cpu.json]

Self-supervised training restores pixels; the eval scores classifier agreement. This asks how much of the gap a
purifier fitted to the classifier closes (Liao et al. 2018, "high-level representation guided denoiser"): starting
from the shipped weights, minimise KL(classifier(clean crop) ‖ classifier(BSN(GS(x̃)))) for x̃ = the clean crop and
a purifier-blind PGD example of it (ε 4/8/16 in turn, made once, 10 steps), plus ``--pixel`` × the trainer's own
pixel loss (the shipped recipe's batches) so the BSN stays an image restorer. Training crops come from the 9
training photos only (seed 1); the measurement is the eval's own setting (88 crops of all 11 photos, seed 0,
PGD 8/255 purifier-blind, agreement with the undefended clean top-1), split three ways, because 72 of those crops
come from photos this fine-tune has seen *with the classifier in the loop*:
- ``all`` / ``train photos`` / ``holdout photos`` (china + flower: the only crops it never saw);
- ``confident``: crops whose undefended clean top-1 probability is ≥ 0.5 (half the crops are near-ties below 0.33,
  where any change of the image can flip the top-1).
Plus the model card's PSNR checks (one pass and the ncis preset on the noisy hold-out photos). Writes JSON.
Not a shipped design: the weights are not kept (see the model card, "Classifier-guided fine-tune").
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ncis_deploy.data import BUNDLED_HOLDOUT, ImageSet
from ncis_deploy.cpu import cpu_record
from ncis_deploy.eval import attacks as A
from ncis_deploy.eval.classifiers import load_classifier
from ncis_deploy.eval.core import EvalOptions, load_eval_set, purify_batched, top1_probability
from ncis_deploy.eval.dataset import bundled
from ncis_deploy.eval.sweep import DEFAULT_EPS
from ncis_deploy.fileio import write_json
from ncis_deploy.model.bsn import mean4
from ncis_deploy.model.purifier import load_purifier
from ncis_deploy.quality import holdout_pairs, mean_psnr
from ncis_deploy.train import TrainConfig, ncis_gs, make_batch

TRAIN_EPS = (4 / 255, 8 / 255, 16 / 255)
CONFIDENT = 0.5


def adversarial_training_crops(net, clf, crops: int) -> tuple[torch.Tensor, torch.Tensor]:
    ds = bundled(crops, 224, seed=1, split="train")
    y = clf.predict(ds.images, 8)
    adv = torch.empty_like(ds.images)
    for i, eps in enumerate(TRAIN_EPS):  # every third crop at each ε
        adv[i::3] = A.pgd(net, ds.images[i::3], y[i::3], eps, 10, seed=100 + i, batch=8).x_adv
    return ds.images, adv


def fine_tune(pur, net, x, adv, steps: int, crop: int, lr: float, pixel: float, batch: int = 4) -> list[dict]:
    bsn = pur.bsn.train()
    for p in bsn.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(bsn.parameters(), lr=lr)
    images = ImageSet.bundled("train")
    # the shipped stage-2 recipe's batches (docs/train.md), drawn from steps the shipped run never used
    pixel_cfg = TrainConfig(crop=64, batch=batch, input="mixed", gs_share=0.25, target="clean")
    rng = np.random.default_rng(0)
    curve = []
    for step in range(steps):
        idx = rng.choice(len(x), batch, replace=False)
        y0, x0 = rng.integers(0, x.shape[-1] - crop + 1, 2)
        xs, xa = (t[idx][:, :, y0 : y0 + crop, x0 : x0 + crop] for t in (x, adv))
        with torch.no_grad():
            target = F.softmax(net(xs), 1)
        logits = net(bsn(ncis_gs(torch.cat([xs, xa]))).clamp(0.0, 1.0))
        kl = F.kl_div(F.log_softmax(logits, 1), torch.cat([target, target]), reduction="batchmean")
        px, pt = make_batch(images, pixel_cfg, 10**6 + step)
        pix = F.mse_loss(bsn(px), pt)
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad()
        (kl + pixel * pix).backward()
        opt.step()
        curve.append({"step": step + 1, "kl": kl.item(), "pixel_mse": pix.item()})
        if (step + 1) % 25 == 0:
            print(f"step {step + 1}/{steps} kl {kl.item():.3f} pixel {pix.item():.5f}", file=sys.stderr, flush=True)
    bsn.eval()
    for p in bsn.parameters():
        p.requires_grad_(False)
    return curve


def agreement(pur, clf, x, adv, y, masks: dict) -> dict:
    pc, pa = (clf.predict(purify_batched(pur, t, 8), 8) == y for t in (x, adv))
    return {k: {"n": int(m.sum()), "clean": float(pc[m].float().mean()), "robust_pgd_8": float(pa[m].float().mean())}
            for k, m in masks.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--crop", type=int, default=160, help="training crop of the 224² views (the classifier's input)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--pixel", type=float, default=100.0, help="weight of the pixel loss next to the KL")
    ap.add_argument("--train-crops", type=int, default=16, help="224² views per training photo")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bsn-guided-cpu.json"))
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    clf = load_classifier("efficientnet-lite0")
    net = clf.require_gradients("the guided fine-tune")
    for p in net.parameters():
        p.requires_grad_(False)
    x_train, adv_train = adversarial_training_crops(net, clf, a.train_crops)
    t_adv = time.perf_counter() - t0

    o = EvalOptions(crops=8)  # the eval's own set and PGD settings, asked rather than restated
    ds = load_eval_set(o, clf)
    y = ds.labels
    adv = A.pgd(net, ds.images, y, DEFAULT_EPS[0], o.steps, seed=o.seed, batch=o.batch).x_adv  # = the sweep's (8/255)
    conf = top1_probability(clf, ds.images, 8)
    hold = torch.tensor([n.split("#")[0] in BUNDLED_HOLDOUT for n in ds.names])
    masks = {"all": torch.ones_like(hold), "train_photos": ~hold, "holdout_photos": hold,
             "confident": conf >= CONFIDENT}

    pairs = holdout_pairs()
    rows = {}
    for name in ("gs", "ncis"):
        pur = load_purifier(name).eval()
        rows[name] = {"agreement": agreement(pur, clf, ds.images, adv, y, masks),
                      **({"psnr_one_pass": mean_psnr(pur.bsn, pairs)} if pur.bsn is not None else {}),
                      "psnr_preset": mean_psnr(pur, pairs)}
    guided = load_purifier("ncis")
    t1 = time.perf_counter()
    curve = fine_tune(guided, net, x_train, adv_train, a.steps, a.crop, a.lr, a.pixel)
    t_train = time.perf_counter() - t1
    rows["ncis_guided"] = {"agreement": agreement(guided, clf, ds.images, adv, y, masks),
                           "psnr_one_pass": mean_psnr(guided.bsn, pairs), "psnr_preset": mean_psnr(guided, pairs)}
    report = {
        "command": "python benchmarks/bsn_guided.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": vars(a) | {"train_eps_255": [e * 255 for e in TRAIN_EPS], "confident_p": CONFIDENT,
                               "eval": "88 crops (8 × 11 photos, seed 0), PGD 8/255 10 steps purifier-blind"},
        "mean4_one_pass_psnr": mean_psnr(mean4, pairs),
        "rows": rows, "curve": curve[:: max(1, len(curve) // 60)],
        "wall_s": {"adversarial_training_crops": t_adv, "fine_tune": t_train, "total": time.perf_counter() - t0},
        "machine": cpu_record(),
    }
    write_json(a.out, report)
    for name, r in rows.items():
        ag = "  ".join(f"{k} {v['clean']:.1%}/{v['robust_pgd_8']:.1%} (n={v['n']})" for k, v in r["agreement"].items())
        print(f"{name:12s} {ag}  psnr one pass {r.get('psnr_one_pass', float('nan')):.2f} preset "
              f"{r['psnr_preset']:.2f}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
