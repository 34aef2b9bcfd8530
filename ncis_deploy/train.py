"""Training of the blind-spot network on ordinary photos (no labels, no adversarial examples).

What the network sees and what it is scored against are separate choices, each measured in the model card:
- ``input``: ``raw`` crops with noise, ``gs`` the same crops Gaussian-smoothed after the noise (what the BSN stage
  of a GS+BSN purifier receives: GS with k=3, σ=1 and T drawn from 1..5 per crop), or ``mixed``: a share
  ``gs_share`` of the crops smoothed (T from 1..5), the rest raw; ``None`` draws T from 0..5 (a share of 5/6);
- ``target``: ``self`` is the plain self-supervised loss ``mse(bsn(input), input)`` — the network never sees the
  pixel it predicts, so with zero-mean independent noise the minimiser is the clean pixel (Noise2Void/Noise2Self);
  ``clean`` scores against the noise-free, unsmoothed crop, i.e. the network learns to give back what noise and GS
  took (the NCIS abstract's "reconstruct the discriminative features"). Still no labels: the photos are the targets.
- augmentation (on by default): flips, 90° rotations, channel permutations and brightness/contrast/colour jitter,
  so a handful of photos cannot turn into colour priors.
- learning rate: linear warm-up, then cosine decay to zero (``schedule="step"`` is the old halving schedule).

Reproducibility: every step draws its crops and noise from generators seeded by ``(seed, step)``, and a checkpoint
holds weights, the full Adam state and the step, so a run resumed from a checkpoint computes exactly the losses the
uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ncis_deploy.data import ImageSet
from ncis_deploy.errors import UserError
from ncis_deploy.fileio import ensure_writable_dir, load_safetensors, read_json, save_safetensors, write_json
from ncis_deploy.model.bsn import BASELINES, TAPS, FBINet, bilateral, mean4
from ncis_deploy.model.purifier import (CONFIG_NAME, PRESETS, WEIGHTS_NAME, default_weights_path, load_bsn_weights,
                                       normalize_config, save_bsn_weights)
from ncis_deploy.model.smoothing import smooth_fused
from ncis_deploy.quality import HOLDOUT_NOISE, gs_sweep, holdout_pairs, mean_psnr

log = logging.getLogger("ncis_deploy")

CHECKPOINT_NAME = "checkpoint.safetensors"
STATE_NAME = "checkpoint.json"
LOG_NAME = "train_log.jsonl"
# GS applied to the training crops for input="gs"/"mixed", T drawn per crop: 0.55–2.75 px² of blur variance (the
# default input is raw: the ncis preset's BSN denoises what its GS leaves, docs/presets.md)
INPUT_GS = {"kernel_size": 3, "sigma": 1.0}
INPUT_GS_ITERATIONS = {"raw": (0,), "gs": (1, 2, 3, 4, 5), "mixed": (0, 1, 2, 3, 4, 5)}
TARGETS = ("self", "clean")
HOLDOUT_CROP = 256  # centre crop of each hold-out photo for the in-training curve
SCHEDULES = ("cosine", "step")


@dataclass
class TrainConfig:
    data: str | None = None  # None: the bundled scikit-image photos
    out: str = "runs/bsn"
    steps: int = 2000
    crop: int = 64
    batch: int = 8
    layers: int = 17
    filters: int = 64
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    noise: float = 8.0  # input noise std drawn uniformly from [0, noise]/255 per image; 0 disables it
    # raw → clean over the blind bilateral: the design that restores most (MODEL_CARD.md, "Designs compared")
    input: str = "raw"  # "raw", "gs" or "mixed": see the module docstring
    gs_share: float | None = None  # input="mixed" only: the share of smoothed crops; None: T uniform over 0..5
    init: str | None = None  # BSN weights (.safetensors) to start from instead of a random init: fine-tuning
    target: str = "clean"  # "self" (the input) or "clean" (the noise-free, unsmoothed crop)
    baseline: str = "bilateral"  # the BSN's output = this blind predictor + the network's correction; "none": plain FBI-Net
    augment: bool = True
    schedule: str = "cosine"  # warm-up + cosine, or "step" (halved at 50 % and 75 %)
    warmup: int = 100  # warm-up steps of the cosine schedule (capped at a tenth of the run)
    taps: str = "live"  # "live": compute only the masks' live taps (faster); "dense": masked dense convs
    eval_every: int = 100
    checkpoint_every: int = 50
    amp: bool | None = None  # None: on for CUDA

    def validate(self) -> None:
        for name in ("steps", "crop", "batch", "layers", "filters", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.layers < 2:
            raise UserError(f"--layers must be >= 2 (FBI-Net has two special first layers), got {self.layers}")
        if self.crop < 8:
            raise UserError(f"--crop must be >= 8, got {self.crop}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if self.noise < 0:
            raise UserError(f"--noise must be >= 0 (in 1/255 units), got {self.noise}")
        for name, allowed in (("input", tuple(INPUT_GS_ITERATIONS)), ("target", TARGETS), ("baseline", BASELINES),
                              ("schedule", SCHEDULES), ("taps", TAPS)):
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.gs_share is not None:
            if self.input != "mixed":
                raise UserError(f"--gs-share applies to --input mixed only (got --input {self.input}); drop it or "
                                f"use --input mixed")
            if not 0.0 <= self.gs_share <= 1.0:
                raise UserError(f"--gs-share must be between 0 and 1 (the share of smoothed crops), got "
                                f"{self.gs_share}")
        if self.warmup < 0:
            raise UserError(f"--warmup must be >= 0, got {self.warmup}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu")


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of ``step`` (a pure function of the step, so resume is exact).

    ``cosine``: linear warm-up over ``warmup`` steps (at most a tenth of the run), then cosine decay to zero;
    ``step``: ``lr`` halved at 50 % and again at 75 % of the run."""
    if cfg.schedule == "step":
        frac = step / cfg.steps
        return cfg.lr * (0.5 if frac >= 0.5 else 1.0) * (0.5 if frac >= 0.75 else 1.0)
    warm = min(cfg.warmup, cfg.steps // 10)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))


def augment(clean: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """90° rotations, channel permutations, brightness/contrast and per-channel gain, each drawn per crop (the
    flips come with the crops). Jitter is mild (±10 % contrast and gain, ±0.05 brightness) and clipped to [0, 1]."""
    out = torch.empty_like(clean)
    for b in range(clean.shape[0]):
        c = torch.rot90(clean[b], int(rng.integers(4)), dims=(1, 2))[torch.from_numpy(rng.permutation(3))]
        gain = torch.from_numpy(rng.uniform(0.9, 1.1, size=(3, 1, 1)).astype(np.float32))
        mean = c.mean()
        c = (c - mean) * float(rng.uniform(0.9, 1.1)) + mean + float(rng.uniform(-0.05, 0.05))
        out[b] = (c * gain).clamp(0.0, 1.0)
    return out


def make_batch(images: ImageSet, cfg: TrainConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) of one step: seeded by (seed, step) alone, so a resumed run draws the same batches."""
    rng = np.random.default_rng([cfg.seed, step])
    clean = images.random_crops(rng, cfg.batch, cfg.crop)
    if cfg.augment:
        clean = augment(clean, rng)
    x = clean
    if cfg.noise > 0:
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        sigma = torch.rand(cfg.batch, 1, 1, 1, generator=g) * (cfg.noise / 255.0)
        x = (clean + sigma * torch.randn(clean.shape, generator=g)).clamp(0.0, 1.0)
    choices = INPUT_GS_ITERATIONS[cfg.input]
    if choices != (0,):
        if cfg.gs_share is None:
            ts = rng.choice(choices, size=cfg.batch)
        else:
            smoothed = rng.random(cfg.batch) < cfg.gs_share
            ts = np.where(smoothed, rng.choice(INPUT_GS_ITERATIONS["gs"], size=cfg.batch), 0)
        x = torch.cat([smooth_fused(x[b : b + 1], INPUT_GS["kernel_size"], INPUT_GS["sigma"], int(t)) if t else
                       x[b : b + 1] for b, t in enumerate(ts)])
    return x, (clean if cfg.target == "clean" else x)


# ---------------------------------------------------------------------------------------------------- checkpoints
def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"optim.{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def save_checkpoint(out: Path, cfg: TrainConfig, step: int, bsn: FBINet, opt: torch.optim.Optimizer,
                    init: dict | None = None) -> None:
    tensors = {f"model.{k}": v for k, v in bsn.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    save_safetensors(out / CHECKPOINT_NAME, tensors, {"format": "ncis-deploy/train-checkpoint"})
    # the state JSON is written last and names the step: it is the commit record of the checkpoint
    write_json(out / STATE_NAME, {"step": step, "config": asdict(cfg), "optimizer": opt_meta, "init": init})
    export_purifier(out, bsn, cfg, step)


def export_purifier(out: Path, bsn: FBINet, cfg: TrainConfig, step: int) -> None:
    """The loadable product of training: purifier.json (the ncis preset's stages) + bsn.safetensors."""
    config = normalize_config({"stages": [dict(s) for s in PRESETS["ncis"].stages], "bsn": bsn.arch,
                               "trained": {"steps": step, "seed": cfg.seed, "data": cfg.data or "bundled",
                                           "noise": cfg.noise, "input": cfg.input,
                                           **({"gs_share": cfg.gs_share} if cfg.gs_share is not None else {}),
                                           **({"init": cfg.init} if cfg.init else {})}})
    save_bsn_weights(out / WEIGHTS_NAME, bsn, {"step": str(step)})
    write_json(out / CONFIG_NAME, config)


def load_checkpoint(out: Path, bsn: FBINet, opt: torch.optim.Optimizer) -> tuple[int, dict]:
    state = read_json(out / STATE_NAME, "training state")
    tensors, _ = load_safetensors(out / CHECKPOINT_NAME, "checkpoint")
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        bsn.load_state_dict(model)
    except RuntimeError as e:
        raise UserError(f"checkpoint in {out} does not fit --layers/--filters ({str(e).splitlines()[0]}); "
                        "resume with the original settings") from None
    opt_state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
    return int(state["step"]), state["config"]


# ------------------------------------------------------------------------------------------------------- training
class _DeferredInterrupt:
    """Turns the first Ctrl-C into a flag checked between steps, so the checkpoint is of a finished step."""

    def __init__(self):
        self.hit = False

    def __enter__(self):
        self._old = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            self.hit = True
            signal.signal(signal.SIGINT, self._old)  # a second Ctrl-C stops at once

        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: keep the default behaviour
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _machine(device: torch.device) -> dict:
    from ncis_deploy.cpu import cpu_record

    rec = {"device": str(device), **cpu_record()}
    if device.type == "cuda":
        rec["gpu"] = torch.cuda.get_device_name(device)
    return rec


def ncis_gs(x: torch.Tensor) -> torch.Tensor:
    """The GS stage in front of the BSN in the ncis preset."""
    st = PRESETS["ncis"].stages[0]
    return smooth_fused(x, st["kernel_size"], st["sigma"], st["iterations"])


def holdout_baselines(pairs) -> dict:
    """Hold-out PSNR of what the BSN has to beat: the noisy input, the blind predictors with zero parameters (the
    4-neighbour mean, the blind bilateral), the ncis preset's GS alone, and the best setting of the GS sweep."""
    best = gs_sweep(pairs)[0]
    return {"noisy": mean_psnr(lambda x: x, pairs), "mean4": mean_psnr(mean4, pairs),
            "bilateral": mean_psnr(bilateral, pairs),
            "gs_ncis": mean_psnr(ncis_gs, pairs), "gs_ncis_setting": dict(PRESETS["ncis"].stages[0]),
            "best_gs": best["psnr"],
            "best_gs_setting": {k: best[k] for k in ("kernel_size", "sigma", "iterations")}}


def _init_path(init: str) -> Path:
    """``--init``: a weights file, a purifier directory (its bsn.safetensors) or ``default`` (the shipped weights)."""
    if init == "default":
        return default_weights_path()
    p = Path(init)
    if p.is_dir():
        p = p / WEIGHTS_NAME
    if not p.is_file():
        raise UserError(f"--init {init}: no such weights file; give a .safetensors file, a purifier directory "
                        f"(with {WEIGHTS_NAME}) or 'default'")
    return p


class Interrupted(UserError):
    exit_code = 130


def resume_config(cfg: TrainConfig, out: Path, explicit: set[str]) -> TrainConfig:
    """The saved run's settings, except those given explicitly now (``steps`` may be raised to train longer)."""
    if not (out / STATE_NAME).exists():
        raise UserError(f"--resume: no checkpoint in {out}; start without --resume")
    saved = read_json(out / STATE_NAME, "training state")["config"]
    names = {f.name for f in fields(TrainConfig)}
    merged = {n: saved.get(n, getattr(cfg, n)) for n in names}
    for name in explicit & names:
        if name not in ("steps", "eval_every", "checkpoint_every", "device", "amp", "out", "taps") and \
                getattr(cfg, name) != saved.get(name):
            raise UserError(f"--resume: --{name.replace('_', '-')} {getattr(cfg, name)} differs from the run being "
                            f"resumed ({saved.get(name)}); drop it or start a new --out")
        merged[name] = getattr(cfg, name)
    return TrainConfig(**merged)


def train(cfg: TrainConfig, resume: bool = False, explicit: set[str] | None = None, progress: bool = True) -> dict:
    """Train a BSN as configured; returns a summary dict. Writes checkpoints, the log and the purifier to cfg.out."""
    if resume:
        cfg = resume_config(cfg, Path(cfg.out), explicit or set())
    cfg.validate()
    device = torch.device(cfg.device)
    use_amp = device.type == "cuda" if cfg.amp is None else (cfg.amp and device.type == "cuda")

    # read everything that can fail before the output directory is touched
    images = ImageSet.from_folder(cfg.data, min_size=cfg.crop) if cfg.data else ImageSet.bundled("train")
    # noise seed 0 as in the model card; 256² centre crops keep an evaluation of the full-size F = 64 network to
    # seconds (the model card measures the full photos)
    holdout = holdout_pairs(crop=HOLDOUT_CROP)
    torch.manual_seed(cfg.seed)
    bsn = FBINet(3, cfg.layers, cfg.filters, baseline=cfg.baseline, taps=cfg.taps)
    init = None
    if cfg.init and not resume:  # resume restores the weights from the checkpoint
        from ncis_deploy.exporters.manifest import sha256_file

        path = _init_path(cfg.init)
        load_bsn_weights(bsn, path, fix="pass the --layers, --filters and --baseline they were trained with")
        init = {"path": str(path), "sha256": sha256_file(path)}  # what "default" meant on the day
    bsn = bsn.to(device)
    out = ensure_writable_dir(cfg.out)

    opt = torch.optim.Adam(bsn.parameters(), lr=cfg.lr)
    amp_dtype = torch.bfloat16 if (use_amp and torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    start = 0
    log_path = out / LOG_NAME
    if resume:
        start, _ = load_checkpoint(out, bsn, opt)
        init = read_json(out / STATE_NAME, "training state").get("init")  # the weights the run started from
        if log_path.exists():  # drop log lines of steps after the checkpoint: they are recomputed
            kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start]
            log_path.write_text("".join(ln + "\n" for ln in kept))
    elif log_path.exists():
        log_path.unlink()
    if start >= cfg.steps:
        raise UserError(f"--resume: the run in {out} already finished {start} steps; raise --steps to train longer")

    def holdout_psnr() -> dict:
        bsn.eval()
        p = {"holdout_psnr": mean_psnr(bsn, holdout, device),
             "holdout_psnr_ncis": mean_psnr(lambda x: bsn(ncis_gs(x)), holdout, device)}
        bsn.train()
        return p

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    t0, done, last_psnr, loss_v = time.perf_counter(), 0, None, float("nan")
    step = start
    with _DeferredInterrupt() as interrupt, log_path.open("a") as logf:
        baselines = holdout_baselines(holdout)
        if step == 0:  # the curve's starting point and the lines it has to beat, on the same hold-out photos
            logf.write(json.dumps({"step": 0, **holdout_psnr(), "baselines": baselines,
                                   "holdout_crop": HOLDOUT_CROP}) + "\n")
        bsn.train()
        while step < cfg.steps:
            x, target = (t.to(device, non_blocking=True) for t in make_batch(images, cfg, step))
            for g in opt.param_groups:
                g["lr"] = learning_rate(cfg, step)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                pred = bsn(x)
            loss = F.mse_loss(pred.float(), target)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            done += 1
            loss_v = loss.item()
            rec = {"step": step, "loss": loss_v, "lr": opt.param_groups[0]["lr"]}
            if step % cfg.eval_every == 0 or step == cfg.steps:
                rec.update(holdout_psnr())
                last_psnr = rec["holdout_psnr"]
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            ips = done * cfg.batch / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss_v:.5f}", img_s=f"{ips:.1f}",
                            **({"psnr": f"{last_psnr:.2f}"} if last_psnr is not None else {}))
            bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or interrupt.hit:
                save_checkpoint(out, cfg, step, bsn, opt, init)
            if interrupt.hit and step < cfg.steps:
                bar.close()
                raise Interrupted(f"interrupted at step {step}/{cfg.steps}; checkpoint saved in {out}; "
                                  f"continue with: ncis-deploy train --out {out} --resume")
    bar.close()
    wall = time.perf_counter() - t0
    summary = {"steps": step, "resumed_from": start if resume else None, "final_loss": loss_v,
               "holdout_psnr": last_psnr, "init": init, "holdout_baselines": baselines, "holdout_noise": HOLDOUT_NOISE,
               "wall_s": wall,
               "images_per_s": done * cfg.batch / wall, "config": asdict(cfg), "out": str(out),
               "skipped_images": len(images.skipped), "machine": _machine(device)}
    write_json(out / "train_summary.json", summary)
    return summary
