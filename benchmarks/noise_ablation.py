"""Does input-noise augmentation help the BSN? Train the same small BSN twice, with and without it, and compare
hold-out PSNR (σ = 8/255 noise, the model card's protocol).

    python benchmarks/noise_ablation.py [--steps 600] [--layers 9] [--filters 16]

Writes benchmarks/results/noise_ablation.json. A small network keeps it to minutes on a laptop CPU; the answer
decides the trainer's default ``--noise``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_card import machine  # noqa: E402

from ncis_deploy import load_purifier  # noqa: E402
from ncis_deploy.fileio import write_json  # noqa: E402
from ncis_deploy.quality import holdout_pairs, mean_psnr  # noqa: E402
from ncis_deploy.train import TrainConfig, train  # noqa: E402


FIRST_TRAINER = dict(baseline="none", input="raw", target="self", augment=False, schedule="step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--filters", type=int, default=16)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "noise_ablation.json")
    args = ap.parse_args()
    pairs = holdout_pairs()
    results = []
    for noise in (0.0, 8.0, 16.0):
        with tempfile.TemporaryDirectory() as d:
            # the first trainer's design, pinned so the recorded JSON stays reproducible (bsn_designs.py compares it
            # with the current default)
            s = train(TrainConfig(out=d, steps=args.steps, crop=args.crop, batch=args.batch, layers=args.layers,
                                  filters=args.filters, noise=noise, eval_every=10**9, checkpoint_every=10**9,
                                  **FIRST_TRAINER))
            p = load_purifier(d)
            results.append({"noise": noise, "wall_s": round(s["wall_s"], 1),
                            "holdout_psnr_bsn": mean_psnr(p.bsn, pairs), "holdout_psnr_ncis": mean_psnr(p, pairs)})
            print(results[-1], flush=True)
    write_json(args.out, {"question": "input-noise augmentation for BSN training (std uniform in [0, noise]/255)",
                          "protocol": "hold-out china+flower, full size, noise sigma 8/255 seed 0",
                          "settings": vars(args) | {"out": str(args.out)}, "results": results,
                          "noisy_input_psnr": mean_psnr(lambda x: x, pairs), "machine": machine()})


if __name__ == "__main__":
    main()
