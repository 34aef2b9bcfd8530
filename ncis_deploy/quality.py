"""Image-quality measurements shared by the trainer's hold-out check and the model card."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from ncis_deploy.model.smoothing import smooth_fused

HOLDOUT_NOISE = 8.0 / 255.0  # stand-in for a zero-mean perturbation of an L∞ 8/255 attack's size
LOW_PRECISION_PSNR_DB = 45.0  # the guard every BF16/INT8 result must meet against FP32 (export, bench, eval)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB for images in [0, 1] (averaged MSE over the whole tensor)."""
    mse = torch.mean((x.double() - ref.double()) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def psnr_or_none(x, ref) -> float | None:
    """:func:`psnr` of arrays or tensors; None when they are identical (infinite: JSON has no infinity)."""
    v = psnr(torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(ref)))
    return None if math.isinf(v) else v


def add_noise(clean: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """Gaussian noise of std ``sigma`` from a fixed seed, clipped to [0, 1] as any valid image must be."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(clean.shape, generator=g, dtype=torch.float32)
    return (clean + sigma * noise.to(clean.device)).clamp(0.0, 1.0)


def noisy_pairs(images: list[np.ndarray], sigma: float = HOLDOUT_NOISE, seed: int = 0, crop: int | None = None):
    """(clean, noisy) [1, 3, H, W] tensors, optionally centre-cropped to ``crop``², noise seeded per image."""
    out = []
    for i, im in enumerate(images):
        t = torch.from_numpy(im).permute(2, 0, 1)[None]
        if crop is not None:
            h, w = t.shape[-2:]
            c = min(crop, h, w)
            y, x = (h - c) // 2, (w - c) // 2
            t = t[..., y : y + c, x : x + c]
        out.append((t.contiguous(), add_noise(t, sigma, seed + i)))
    return out


def holdout_pairs(crop: int | None = None):
    """The hold-out protocol every BSN figure uses: the bundled hold-out photos (china, flower), Gaussian noise
    σ = HOLDOUT_NOISE from seed 0, full size unless ``crop``."""
    from ncis_deploy.data import ImageSet

    return noisy_pairs(ImageSet.bundled("holdout").images, HOLDOUT_NOISE, seed=0, crop=crop)


@torch.no_grad()
def mean_psnr(fn, pairs, device="cpu") -> float:
    vals = [psnr(fn(noisy.to(device)).clamp(0, 1).cpu(), clean) for clean, noisy in pairs]
    return float(np.mean(vals))


GS_SWEEP = {"kernel_size": (3, 5), "sigma": (0.5, 1.0, 2.0), "iterations": (1, 2, 3, 5, 10)}


def gs_sweep(pairs, grid: dict | None = None) -> list[dict]:
    """Mean PSNR of every GS setting in ``grid`` (default :data:`GS_SWEEP`), best first."""
    grid = grid or GS_SWEEP
    rows = []
    for k, s, t in itertools.product(grid["kernel_size"], grid["sigma"], grid["iterations"]):
        p = mean_psnr(lambda x: smooth_fused(x, k, s, t), pairs)
        rows.append({"kernel_size": k, "sigma": s, "iterations": t, "psnr": p})
    return sorted(rows, key=lambda r: -r["psnr"])


def channel_shift(out: torch.Tensor, clean: torch.Tensor) -> list[float]:
    """Per-channel mean of ``out − clean`` in 1/255 units: a colour cast shows here, missing detail does not."""
    d = (out.double() - clean.double()).mean(dim=(0, 2, 3)) * 255.0
    return [float(v) for v in d]


def affine_fit_psnr(out: torch.Tensor, clean: torch.Tensor) -> float:
    """PSNR after the best per-channel affine map ``a·out + b`` (least squares): how much of the error is colour
    and brightness bias rather than lost detail."""
    o, c = out.double().transpose(0, 1).flatten(1), clean.double().transpose(0, 1).flatten(1)
    om, cm = o.mean(1, keepdim=True), c.mean(1, keepdim=True)
    a = ((o - om) * (c - cm)).sum(1, keepdim=True) / ((o - om) ** 2).sum(1, keepdim=True).clamp_min(1e-12)
    fitted = a * (o - om) + cm
    return psnr(fitted.clamp(0, 1), c)
