"""Measure a trained BSN on the held-out photos and write the model card (JSON, Markdown, training-curve PNG).

    python benchmarks/model_card.py runs/default --ship \
        --previous path/to/old/bsn.safetensors --designs benchmarks/results/bsn-designs-cpu.json

Hold-out: the two scikit-learn photos (china, flower; 427×640), never used in training, with Gaussian noise
σ = 8/255 (seed 0, clipped to [0, 1]) as a stand-in for a zero-mean perturbation. Every number is measured here or
read from the named result files; nothing is estimated.
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
from ncis_deploy.eval.sweep import label
from ncis_deploy.fileio import write_json
from ncis_deploy.model.bsn import bilateral, mean4
from ncis_deploy.model.purifier import PRESETS, WEIGHTS_NAME, default_weights_path
from ncis_deploy.quality import affine_fit_psnr, channel_shift, gs_sweep, holdout_pairs, psnr
from ncis_deploy.train import LOG_NAME, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CURVE_NAME = "training_curve.png"
EXAMPLES_NAME = "purified_examples.png"
# the acceptance of the BSN work (issue 11), checked on every card
MIN_GAIN_OVER_MEAN4_DB = 1.0
MAX_CHANNEL_SHIFT = 2.0  # in 1/255


def train_command(cfg: dict) -> str:
    args = ["ncis-deploy", "train"]
    for k in TrainConfig.__dataclass_fields__:  # every setting, so the command stays exact if defaults change
        v = cfg.get(k)
        if k == "amp" or v is None:
            continue
        if isinstance(v, bool):
            args.append(f"--{'' if v else 'no-'}{k}")
        else:
            args += [f"--{k.replace('_', '-')}", str(v)]
    return shlex.join(args)


def machine() -> dict:
    from ncis_deploy.cpu import cpu_record

    return {**cpu_record(), "python": platform.python_version(), "platform": platform.platform()}


@torch.no_grad()
def measure(purifier, pairs) -> dict:
    """Per photo and mean: PSNR of each predictor, and the BSN's colour shift and affine-fit PSNR."""
    st = PRESETS["gs"].stages[0]
    gs = load_purifier("gs")
    fns = {"noisy input": lambda x: x, "4-neighbour mean": mean4, "blind bilateral (0 parameters)": bilateral,
           "gs preset": gs,
           "one BSN pass": purifier.bsn, "ncis preset": purifier}
    per = {}
    for name, (clean, noisy) in zip(BUNDLED_HOLDOUT, pairs):
        outs = {k: f(noisy).clamp(0, 1) for k, f in fns.items()}
        per[name] = {k: psnr(v, clean) for k, v in outs.items()}
        per[name]["BSN channel shift (1/255, RGB)"] = channel_shift(outs["one BSN pass"], clean)
        per[name]["BSN after per-channel affine fit"] = affine_fit_psnr(outs["one BSN pass"], clean)
    mean = {k: sum(per[n][k] for n in per) / len(per) for k in fns}
    mean["BSN after per-channel affine fit"] = sum(per[n]["BSN after per-channel affine fit"] for n in per) / len(per)
    return {"mean": mean, "per_image": per, "gs_preset": dict(st)}


def checks(m: dict) -> list[dict]:
    per, mean = m["per_image"], m["mean"]
    gain = mean["one BSN pass"] - mean["4-neighbour mean"]
    worst_shift = max(abs(v) for n in per for v in per[n]["BSN channel shift (1/255, RGB)"])
    return [
        {"check": f"one BSN pass ≥ 4-neighbour mean + {MIN_GAIN_OVER_MEAN4_DB} dB (mean)", "value": f"{gain:+.2f} dB",
         "pass": gain >= MIN_GAIN_OVER_MEAN4_DB},
        {"check": "one BSN pass ≥ 4-neighbour mean on each photo",
         "value": ", ".join(f"{n} {per[n]['one BSN pass'] - per[n]['4-neighbour mean']:+.2f} dB" for n in per),
         "pass": all(per[n]["one BSN pass"] >= per[n]["4-neighbour mean"] for n in per)},
        {"check": f"every channel's mean shift ≤ {MAX_CHANNEL_SHIFT}/255 on each photo",
         "value": f"worst {worst_shift:.2f}/255", "pass": worst_shift <= MAX_CHANNEL_SHIFT},
        {"check": "ncis preset ≥ gs preset (the BSN stage adds back)",
         "value": f"{mean['ncis preset'] - mean['gs preset']:+.2f} dB", "pass": mean["ncis preset"] >= mean["gs preset"]},
    ]


def plot_curve(log_path: Path, out: Path, fine_tune: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln]
    b = recs[0]["baselines"]
    pts = [r for r in recs if "holdout_psnr" in r]
    fig, ax = plt.subplots(figsize=(11.5, 4.8))
    ax.plot([r["step"] for r in pts], [r["holdout_psnr"] for r in pts], marker="o", ms=3, label="one BSN pass (on noisy)")
    ncis_gs = label({"stages": [b["gs_ncis_setting"]]})
    ax.plot([r["step"] for r in pts], [r["holdout_psnr_ncis"] for r in pts], marker="s", ms=3,
            label=f"{ncis_gs}, then the BSN")
    best_gs = label({"stages": [{"type": "gs", **b["best_gs_setting"]}]})
    for key, name, color in (("mean4", "4-neighbour mean (0 parameters)", "tab:red"),
                             ("bilateral", "blind bilateral (0 parameters)", "tab:brown"),
                             ("best_gs", f"best GS ({best_gs})", "tab:green"),
                             ("gs_ncis", f"{ncis_gs} alone", "tab:purple"),
                             ("noisy", "noisy input", "grey")):
        if key in b:  # logs from before the blind bilateral existed lack it
            ax.axhline(b[key], ls="--", lw=1.2, color=color, label=f"{name}: {b[key]:.2f} dB")
    crop = recs[0].get("holdout_crop")  # runs before it was recorded measured the full photos
    ax.set(xlabel="fine-tuning step (step 0: the stage-1 weights)" if fine_tune else "training step",
           ylabel="PSNR (dB)",
           title=f"Hold-out china + flower, {f'{crop}² centre crops' if crop else 'full size'}, Gaussian noise σ = 8/255")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the lines span the whole plot
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _stages(preset) -> str:
    """The sweep's label of a preset, in ASCII: PIL's default font has no σ or ×."""
    return label({"stages": list(preset.stages)}).replace("σ", "sigma ").replace("×", " x")


@torch.no_grad()
def examples_png(purifier, out: Path) -> None:
    """Clean hold-out photo | gs preset | this purifier (ncis), centre crops at 2× zoom: what a classifier sees."""
    import numpy as np
    from PIL import Image, ImageDraw

    gs = load_purifier("gs")
    rows = []
    for im in ImageSet.bundled("holdout").images:
        x = torch.from_numpy(im).permute(2, 0, 1)[None]
        tiles = []
        for t in (x, gs(x), purifier(x)):
            a = (t[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            h, w = a.shape[:2]
            tiles.append(a[h // 2 - 80 : h // 2 + 80, w // 2 - 120 : w // 2 + 120].repeat(2, 0).repeat(2, 1))
        rows.append(np.concatenate(tiles, 1))
    img = Image.fromarray(np.concatenate(rows, 0))
    draw = ImageDraw.Draw(img)
    for i, label in enumerate(("clean photo", f"gs preset ({_stages(PRESETS['gs'])})",
                               f"ncis preset ({_stages(PRESETS['ncis'])})")):
        draw.rectangle((i * 480, 0, i * 480 + 8 * len(label) + 8, 16), fill=(0, 0, 0))
        draw.text((i * 480 + 4, 2), label, fill=(255, 255, 255))
    img.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="directory written by `ncis-deploy train`")
    ap.add_argument("--ship", action="store_true", help="copy the weights into the package and write the card there")
    ap.add_argument("--previous", type=Path, default=None,
                    help="the weights this card replaces, measured the same way for the diagnosis section")
    ap.add_argument("--first", type=Path, default=None,
                    help="the first shipped weights (git show 0794f07:ncis_deploy/weights/bsn_default.safetensors), "
                         "measured the same way for the diagnosis of why they were worse than the 4-neighbour mean")
    ap.add_argument("--designs", type=Path, default=None, help="bsn_designs.py result JSON to summarise")
    args = ap.parse_args()

    summary = json.loads((args.run / "train_summary.json").read_text())
    pairs = holdout_pairs()
    t0 = time.perf_counter()
    purifier = load_purifier("ncis", weights=args.run / WEIGHTS_NAME)  # the preset as shipped, with these weights
    m = measure(purifier, pairs)
    best = gs_sweep(pairs)[:5]
    card = {
        "weights": "bsn_default.safetensors",
        "architecture": {"name": "FBI-Net", **purifier.bsn.arch,
                         "parameters": sum(p.numel() for p in purifier.bsn.parameters()),
                         "receptive_radius": purifier.bsn.receptive_radius()},
        "training": {"command": train_command(summary["config"]), "config": summary["config"],
                     "steps": summary["steps"], "wall_time_s": round(summary["wall_s"], 1),
                     "crops_per_s": round(summary["images_per_s"], 2), "final_loss": summary["final_loss"],
                     "data": summary["config"]["data"] or "bundled scikit-image photos (9)",
                     "machine": summary.get("machine")},
        "holdout": {"images": list(BUNDLED_HOLDOUT), "noise_sigma": "8/255", "clipped": True, "noise_seed": 0,
                    "psnr_db": m["mean"], "per_image": m["per_image"], "gs_sweep_top5": best},
        "checks": checks(m),
        "measured_on": machine(),
        "ncis_deploy_version": ncis_deploy.__version__,
    }
    init = summary.get("init")
    if init:  # a fine-tune: the card gives the run it started from too, so the recipe stays complete
        start = Path(init["path"]).parent / "train_summary.json"
        first = json.loads(start.read_text()) if start.exists() else None
        card["training"]["init"] = {**init, **({"command": train_command(first["config"]), "steps": first["steps"],
                                                "wall_time_s": round(first["wall_s"], 1)} if first else {})}
    for key, path in (("previous_weights", args.previous), ("first_weights", args.first)):
        if path:
            other = load_purifier("ncis", weights=path)
            card[key] = {"path": str(path), "arch": other.bsn.arch, **measure(other, pairs)}
    if args.designs:
        d = json.loads(args.designs.read_text())
        card["designs"] = {"file": str(args.designs.relative_to(ROOT) if args.designs.is_absolute() else args.designs),
                           "command": d["command"], "train": d["train"], "trainer_speed": d["trainer_speed"],
                           "baselines": d["baselines"],
                           "linear_blind_predictors": d.get("linear_blind_predictors"),
                           "results": {k: {"bsn": v["bsn"], "ncis": v["ncis"], "start": v["curve"][0]["holdout_psnr"],
                                           "settings": v["settings"]} for k, v in d["designs"].items()}}
    card["holdout"]["measure_s"] = round(time.perf_counter() - t0, 1)
    dest = default_weights_path().parent if args.ship else args.run
    if args.ship:
        shutil.copyfile(args.run / WEIGHTS_NAME, default_weights_path())
    plot_curve(args.run / LOG_NAME, dest / CURVE_NAME, fine_tune=bool(summary.get("init")))
    examples_png(purifier, dest / EXAMPLES_NAME)
    write_json(dest / "model_card.json", card)
    (dest / "MODEL_CARD.md").write_text(render(card))
    print(render(card))


def _table(rows: dict, per: dict) -> list[str]:
    names = list(per)
    out = [f"| purifier | mean PSNR (dB) | {' | '.join(names)} |", "|---|---:|" + "---:|" * len(names)]
    for k, v in rows.items():
        out.append(f"| {k} | {v:.2f} | " + " | ".join(f"{per[n][k]:.2f}" for n in names) + " |")
    return out


def _init_lines(init: dict | None) -> list[str]:
    if not init:
        return []
    if "command" not in init:
        return [f"- started from weights `{init['path']}` (sha256 {init['sha256'][:12]}…; no training record beside them)"]
    return [f"- stage 1, the weights it starts from (sha256 {init['sha256'][:12]}…): `{init['command']}` — "
            f"{init['steps']} steps, wall time {init['wall_time_s']} s"]


def render(card: dict) -> str:
    a, t, h = card["architecture"], card["training"], card["holdout"]
    shifts = {n: h["per_image"][n]["BSN channel shift (1/255, RGB)"] for n in h["per_image"]}
    mach = t.get("machine") or {}
    lines = [
        "# Model card: the shipped BSN weights (`bsn_default.safetensors`)", "",
        "Written by `benchmarks/model_card.py` from a real training run and real measurements; regenerate, don't edit.", "",
        "## Network",
        f"FBI-Net blind-spot network, {a['channels']} channels, L = {a['layers']} layers, F = {a['filters']} filters, "
        f"{a['parameters']:,} parameters, receptive radius {a['receptive_radius']} px; baseline `{a['baseline']}`"
        + {"mean4": ": the output is the 4-neighbour mean plus the network's correction (both blind to the centre "
                     "pixel).",
           "bilateral": ": the output is the blind bilateral (the 48 neighbours of a 7×7 window weighted by distance "
                        "and by difference from the 4-neighbour mean) plus the network's correction (both blind to "
                        "the centre pixel; training starts at the bilateral)."}.get(a["baseline"], "."), "",
        "## Training",
        *_init_lines(t.get("init")),
        (f"- stage 2 fine-tunes them (`--init`; the learning-rate schedule starts over): `{t['command']}`"
         if t.get("init") else f"- command: `{t['command']}`"),
        f"- {t['steps']} steps, wall time {t['wall_time_s']} s ({t['crops_per_s']} crops/s), final loss "
        f"{t['final_loss']:.5f}" + (f", on {mach.get('cpu')} ({mach.get('cores')} cores, ISA "
                                    f"{' '.join(mach.get('isa') or []) or 'n/a'}, torch {mach.get('torch')})"
                                    if mach else "")
        + (f"; both stages {t['init']['wall_time_s'] + t['wall_time_s']:.0f} s of CPU in all"
           if t.get("init", {}).get("wall_time_s") else ""),
        f"- data: {t['data']}; input `{t['config']['input']}`"
        + (f" (a share of {t['config']['gs_share']} smoothed)" if t["config"].get("gs_share") is not None else "")
        + f", target `{t['config']['target']}`, augmentation "
        f"{'on' if t['config']['augment'] else 'off'}, schedule `{t['config']['schedule']}`", "",
        "## Hold-out PSNR",
        f"Photos {', '.join(h['images'])} (never trained on), full size, Gaussian noise σ = {h['noise_sigma']} "
        f"(seed {h['noise_seed']}, clipped to [0, 1]); PSNR to the clean photo.", "",
        *_table(h["psnr_db"], h["per_image"]), "",
        "BSN output's mean shift per channel (R, G, B) in 1/255: "
        + "; ".join(f"{n} ({', '.join(f'{v:+.2f}' for v in s)})" for n, s in shifts.items()) + ".", "",
        "| check | measured | |", "|---|---|---|",
        *[f"| {c['check']} | {c['value']} | {'pass' if c['pass'] else '**FAIL**'} |" for c in card["checks"]], "",
        f"![hold-out PSNR during training]({CURVE_NAME})", "",
        f"What a classifier sees on the clean hold-out photos (centre crops, 2× zoom): ![clean | gs | ncis]({EXAMPLES_NAME})",
        "",
        "GS sweep (kernel 3/5 × sigma 0.5/1/2 × iterations 1/2/3/5/10), best five:", "",
        "| kernel | sigma | iterations | PSNR (dB) |", "|---:|---:|---:|---:|",
        *[f"| {r['kernel_size']} | {r['sigma']} | {r['iterations']} | {r['psnr']:.2f} |" for r in h["gs_sweep_top5"]], "",
    ]
    if "designs" in card:
        d = card["designs"]
        sp = d["trainer_speed"]
        tr = d["train"]
        gs_label = "GS " + label({"stages": [d["baselines"]["gs_ncis_setting"]]}).removeprefix("gs ")
        lines += [
            "## Designs compared",
            f"Each trained the same way for {tr['steps']} steps (F = {tr['filters']}, L = {tr['layers']}, crop "
            f"{tr['crop']}, batch {tr['batch']}, seed 0) by `{d['command']}` ({d['file']}). Hold-out as above.", "",
            f"| design | one BSN pass (dB) | {gs_label} + BSN (dB) |", "|---|---:|---:|",
            f"| *4-neighbour mean / {gs_label} alone* | *{d['baselines']['mean4']:.2f}* | *{d['baselines']['gs_ncis']:.2f}* |",
            *[f"| {k} | {v['bsn']:.2f} | {v['ncis']:.2f} |" for k, v in d["results"].items()], "",
            f"Trainer speed, same run (F = {sp['filters']}, crop {sp['crop']}, batch {sp['batch']}): live taps "
            f"{sp['steps_per_s']['live']:.2f} steps/s, masked dense {sp['steps_per_s']['dense']:.2f} steps/s "
            f"({sp['live_over_dense']:.2f}×).", "",
        ]
    if "previous_weights" in card:
        p = card["previous_weights"]
        lines += [
            "## The weights this replaces, measured the same way",
            f"Architecture {p['arch']}.", "",
            *_table(p["mean"], p["per_image"]), "",
            "Mean shift per channel (R, G, B) in 1/255: " + "; ".join(
                f"{n} ({', '.join(f'{v:+.2f}' for v in p['per_image'][n]['BSN channel shift (1/255, RGB)'])})"
                for n in p["per_image"]) + ".", "",
        ]
    lines += diagnosis(card) + GPU_RECIPE
    return "\n".join(lines) + "\n"


def diagnosis(card: dict) -> list[str]:
    """Why the first shipped BSN was worse than a zero-parameter blind predictor, what the designs since then
    changed, and what is still open, from the numbers on this card."""
    if "first_weights" not in card or "designs" not in card:
        return []
    p, d, h = card["first_weights"], card["designs"], card["holdout"]
    r = d["results"]
    first, aug = r["old: plain FBI-Net, self target, no augmentation, step lr"], r["plain FBI-Net + augmentation + cosine"]
    res_self, res_clean = r["mean4 residual, self target"], r["mean4 residual, clean target"]
    gs_clean = r["mean4 residual, GS input → clean (NCIS)"]
    worst = max(abs(v) for n in p["per_image"] for v in p["per_image"][n]["BSN channel shift (1/255, RGB)"])
    fit_gain = p["mean"]["BSN after per-channel affine fit"] - p["mean"]["one BSN pass"]
    out = [
        "## Diagnosis: why the first BSN was worse than the 4-neighbour mean, and what changed since",
        f"1. **It never reached its starting line.** Plain FBI-Net has no path from input to output that is not "
        f"learned: at initialisation its hold-out PSNR is {first['start']:.1f} dB, and after the 400 steps of the "
        f"design study {first['bsn']:.2f} dB; the first shipped weights (2,500 steps) measure "
        f"{p['mean']['one BSN pass']:.2f} dB against the 4-neighbour mean's {h['psnr_db']['4-neighbour mean']:.2f} dB. "
        f"Most of the remaining error is colour and brightness: a per-channel affine fit of its output recovers "
        f"{fit_gain:.1f} dB, and its channels are shifted by up to {worst:.1f}/255 — the network was still learning "
        "to reproduce the image's colours, not yet restoring detail.",
        f"2. **Augmentation and the schedule were not the cause.** The same 400 steps with flips, rotations, channel "
        f"permutations, colour jitter and warm-up + cosine give {aug['bsn']:.2f} dB (first trainer "
        f"{first['bsn']:.2f} dB): both are still climbing from {aug['start']:.1f} dB. They stay on because the network must not learn "
        "colour priors from 9 photos (see the colour check above), but the start is what matters.",
        f"3. **Residual over the blind baseline fixes the start.** Output = 4-neighbour mean + correction, head at zero: "
        f"every residual design starts at {d['baselines']['mean4']:.2f} dB and the output's colours are the "
        f"neighbours' colours. Trained on raw noisy photos it then gains little: {res_self['bsn']:.2f} dB (self "
        f"target) and {res_clean['bsn']:.2f} dB (clean target) after 400 steps.",
    ]
    lin = d.get("linear_blind_predictors", {}).get("predictors")
    if lin:
        best = max(lin.items(), key=lambda kv: sum(kv[1]["fitted_on_holdout_itself"]))
        tr = max(lin.items(), key=lambda kv: sum(kv[1]["fitted_on_training_photos"]))
        out.append(
            f"4. **At σ = 8/255 a blind predictor has little to gain on these photos.** The best linear blind "
            f"predictor fitted on the noisy training photos ({tr[0]} neighbours) reaches "
            f"{sum(tr[1]['fitted_on_training_photos']) / 2:.2f} dB, and even one fitted on the hold-out photos "
            f"themselves ({best[0]}, an upper bound for linear prediction) only "
            f"{sum(best[1]['fitted_on_holdout_itself']) / 2:.2f} dB, against "
            f"{d['baselines']['mean4']:.2f} dB for the 4-neighbour mean. The noisy input itself is at "
            f"{d['baselines']['noisy']:.2f} dB: the centre pixel carries more than its neighbours can replace.")
    bil = {k: v for k, v in r.items() if v["settings"].get("baseline") == "bilateral"}
    raw_bil = next((v for v in bil.values() if v["settings"].get("input") == "raw"), None)
    raw_bil_gs = ", ".join(f"{k}: {v['bsn']:.2f} dB one pass, {v['ncis']:.2f} dB after GS" for k, v in bil.items()
                           if v["settings"].get("input") != "raw")
    out += [
        f"5. **Restoration after GS is a different job.** Trained on GS-smoothed noisy crops against the clean "
        f"crop, a mean4-residual BSN lifts GS k3 σ1 T5 + BSN above that GS alone ({gs_clean['ncis']:.2f} vs "
        f"{d['baselines']['gs_ncis']:.2f} dB after 400 steps), but a network that learned to undo blur sharpens an "
        f"unblurred noisy photo: one pass on raw noise falls to {gs_clean['bsn']:.2f} dB. The weights shipped before the "
        "bilateral ones were that design.",
    ]
    gap = h["psnr_db"]["ncis preset"] - h["psnr_db"]["gs preset"]
    if raw_bil:
        out.append(
            f"6. **A better blind predictor to start from.** Linear prediction is capped, but a non-linear blind "
            f"predictor with zero parameters is not: the blind bilateral (7×7 neighbours, weights from distance and "
            f"from difference to the 4-neighbour mean) reaches {h['psnr_db']['blind bilateral (0 parameters)']:.2f} "
            f"dB on the hold-out photos, where the 4-neighbour mean reaches {h['psnr_db']['4-neighbour mean']:.2f} "
            f"dB: flat regions average many neighbours, edges keep to their side. A residual BSN over it, trained "
            f"on raw noisy crops, then learns what the filter misses (texture): {raw_bil['bsn']:.2f} dB after the "
            f"design study's 400 steps, where the mean4 residual reached {res_clean['bsn']:.2f} dB. It is the "
            "trainer's default and the base of the shipped weights; the GS stage in front of it is chosen by the "
            "eval sweep (docs/presets.md).")
        prev = card.get("previous_weights", {}).get("mean")
        cfg = card["training"]["config"]
        if gap >= 0 and prev and cfg.get("init") and cfg.get("input") == "mixed":
            out.append(
                f"7. **Both jobs in one network: fine-tune the raw denoiser on a mixed diet.** The raw-trained "
                f"bilateral residual (the weights this replaces) denoises well, {prev['one BSN pass']:.2f} dB one "
                f"pass, but after GS it smooths a little more than it restores (ncis {prev['ncis preset']:.2f} vs gs "
                f"{prev['gs preset']:.2f} dB). Trained from scratch on mixed input the balance tips the other way "
                f"(400 steps: {raw_bil_gs}). Fine-tuning the raw denoiser for {card['training']['steps']} steps with "
                f"a share of {cfg['gs_share']} of the crops smoothed keeps one pass at "
                f"{h['psnr_db']['one BSN pass']:.2f} dB and puts the ncis preset {gap:+.2f} dB above its GS stage: "
                "every check above passes.")
        if gap < 0:
            out.append(
                f"7. **Still open: after GS it smooths rather than restores.** A denoiser trained on raw noise removes "
                f"what GS left of the noise and a little more detail: the ncis preset is {-gap:.2f} dB below its GS "
                f"stage here (the check above fails), while in the eval sweep the same BSN adds robust agreement after "
                f"GS (docs/presets.md). The designs that restore after GS (GS or mixed input) lose the one-pass "
                f"figure at 400 steps ({raw_bil_gs}); one network that does both needs a longer mixed run.")
    return out + [""]


GPU_RECIPE = [
    "## GPU recipe (full size)",
    "Not run yet: no GPU was lent to the sessions that trained these weights. On a CUDA machine (AMP is on by default):",
    "",
    "```",
    "ncis-deploy train --device cuda --data /path/to/photos --filters 64 --layers 17 --crop 128 --batch 32 \\",
    "    --steps 100000 --out runs/bsn-f64",
    "ncis-deploy train --device cuda --data /path/to/photos --filters 64 --layers 17 --crop 128 --batch 32 \\",
    "    --steps 20000 --lr 3e-4 --input mixed --gs-share 0.25 --init runs/bsn-f64 --out runs/bsn-f64-ft",
    "python benchmarks/model_card.py runs/bsn-f64-ft       # measure before shipping; --ship to replace the default",
    "```",
    "",
]


if __name__ == "__main__":
    sys.exit(main())
