"""A DiffPure-class stand-in: a guided-diffusion-style (ADM) UNet with random weights, for cost context only.

DiffPure's ImageNet setting runs the reverse diffusion of OpenAI guided-diffusion's 256×256 unconditional model
(`256x256_diffusion_uncond`: 256 base channels, channel multipliers 1, 1, 2, 2, 4, 4, two residual blocks per level,
self-attention at 32², 16² and 8² with 64 channels per head, BigGAN-style up/down-sampling residual blocks,
scale-shift norm, 6 output channels for the learned variance; ~552M parameters) for ~150 steps per image
(Nie et al. 2022, ImageNet setting t* = 0.15). This module rebuilds that *architecture class* compactly — the same block types,
widths and resolutions — so its cost can be timed next to NCIS. It is **not** DiffPure: the weights are random, no
SDE solver runs, and the cost of one network evaluation is multiplied by the step count. Every number it produces is
labelled a stand-in.

``width`` (the base channel count) makes it smaller for tests: 256 is the full-size model, 32 a toy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

DIFFPURE_STEPS = 150  # DiffPure, ImageNet: t* = 0.15 of 1000 → ~150 reverse-diffusion steps at 256² per ImageNet image
FULL_WIDTH = 256


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 256
    width: int = FULL_WIDTH  # base channels ("num_channels")
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # feature-map sizes (at image_size 256) with attention
    head_channels: int = 64
    in_channels: int = 3
    out_channels: int = 6  # learn_sigma: mean and variance

    def as_dict(self) -> dict:
        return asdict(self)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, ch), ch)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, timestep scale-shift, GroupNorm-SiLU-conv, skip; optional 2× up/down inside (BigGAN)."""

    def __init__(self, ch: int, emb_ch: int, out_ch: int | None = None, up: bool = False, down: bool = False):
        super().__init__()
        out_ch = out_ch or ch
        self.up, self.down = up, down
        self.in_norm, self.in_conv = _norm(ch), nn.Conv2d(ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_ch, 2 * out_ch)
        self.out_norm, self.out_conv = _norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.in_norm(x))
        h = self.in_conv(self._resample(h))
        x = self._resample(x)
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift
        h = self.out_conv(F.silu(h))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, ch: int, head_channels: int):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.norm = _norm(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj = nn.Conv1d(ch, ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))
        q, k, v = qkv.reshape(b, 3, self.heads, c // self.heads, h * w).permute(1, 0, 2, 4, 3).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)  # [b, heads, hw, d]
        a = a.permute(0, 1, 3, 2).reshape(b, c, h * w)
        return x + self.proj(a).reshape(b, c, h, w)


class _Seq(nn.ModuleList):
    def forward(self, x, emb):
        for m in self:
            x = m(x, emb)
        return x


class DiffusionUNet(nn.Module):
    """ADM-style UNet: ``forward(x [N, 3, S, S], t [N]) -> [N, 6, S, S]``."""

    def __init__(self, cfg: UNetConfig = UNetConfig()):
        super().__init__()
        self.cfg = cfg
        ch = cfg.width
        emb_ch = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        attn_ds = {cfg.image_size // r for r in cfg.attention_resolutions}
        self.inputs = nn.ModuleList([_Seq([_Conv(cfg.in_channels, ch)])])
        skips, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                blocks = [ResBlock(ch, emb_ch, mult * cfg.width)]
                ch = mult * cfg.width
                if ds in attn_ds:
                    blocks.append(AttentionBlock(ch, cfg.head_channels))
                self.inputs.append(_Seq(blocks))
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.inputs.append(_Seq([ResBlock(ch, emb_ch, down=True)]))
                skips.append(ch)
                ds *= 2
        self.middle = _Seq([ResBlock(ch, emb_ch), AttentionBlock(ch, cfg.head_channels), ResBlock(ch, emb_ch)])
        self.outputs = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                blocks = [ResBlock(ch + skips.pop(), emb_ch, mult * cfg.width)]
                ch = mult * cfg.width
                if ds in attn_ds:
                    blocks.append(AttentionBlock(ch, cfg.head_channels))
                if level and i == cfg.num_res_blocks:
                    blocks.append(ResBlock(ch, emb_ch, up=True))
                    ds //= 2
                self.outputs.append(_Seq(blocks))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.cfg.width).to(x.dtype))
        hs = []
        h = x
        for block in self.inputs:
            h = block(h, emb)
            hs.append(h)
        h = self.middle(h, emb)
        for block in self.outputs:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


class _Conv(nn.Conv2d):
    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding=1)

    def forward(self, x, emb=None):  # noqa: D401 - same call signature as the other blocks
        return super().forward(x)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_unet(width: int = FULL_WIDTH, image_size: int = 256, seed: int = 0) -> DiffusionUNet:
    """The stand-in with random (PyTorch default-initialised) weights, in eval mode, without gradients."""
    if width < 1:
        raise ValueError("width must be >= 1")
    torch.manual_seed(seed)
    model = DiffusionUNet(UNetConfig(image_size=image_size, width=width)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
