"""FBI-Net, the blind-spot network (BSN) of FBI-Denoiser (Byun et al., CVPR 2021), for C channels.

Two chains run side by side. The *raw* chain is a stack of masked convolutions whose combined receptive field
excludes the centre pixel; the *out* chain is 1×1 residual blocks fed by the raw chain, which mix channels but
never look at other pixels, so they cannot reintroduce the centre. Masks are multiplied into the weights at
every forward, so the blind spot holds for any weight values, trained or random (a gradient test checks it).

Tap layout (offsets (dy, dx) the raw chain reads):
- layer 1: 3×3 minus the centre;
- layer 2: 5×5 keeping the centre and the 8 knight moves (±1, ±2), (±2, ±1);
- layers 3..L: 3×3 with dilation 3 keeping the centre and the four corners (±3, ±3).
Every dilated offset is (3a, 3b) with a ≡ b (mod 2), and no offset of layers 1–2 has that form, so no path
returns to (0, 0).

Two choices on top of FBI-Net, both measured (ncis_deploy/weights/MODEL_CARD.md):
- ``baseline="mean4"`` / ``"bilateral"``: the output is a zero-parameter blind predictor plus the network's
  correction, and the head starts at zero, so training starts at that predictor instead of far below it, and the
  network cannot drift the image's colours through a learned output bias. ``mean4`` is the 4-neighbour mean;
  ``bilateral`` (the default of ``ncis-deploy train``) averages the 48 neighbours of a 7×7 window with weights that
  fall with distance and with difference from the 4-neighbour mean, so flat regions average many neighbours and
  edges keep to their side; the network then learns what such a filter misses (texture);
- ``taps="live"`` (the default): masked convolutions compute only their live taps (layers 3..L: 5 of 9, layer 2:
  9 of 25) as a 1×1 conv plus small dilated convs, the same decomposition the ONNX exporter uses. Weights stay in
  the dense masked layout, so the state dict and the blind spot are the same for both forms; ``taps="dense"`` is
  the reference.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def _mask(kind: str) -> torch.Tensor:
    if kind == "first":
        m = torch.ones(3, 3)
        m[1, 1] = 0
    elif kind == "knight":
        m = torch.zeros(5, 5)
        m[2, 2] = 1
        for dy, dx in [(1, 2), (2, 1)]:
            for sy in (1, -1):
                for sx in (1, -1):
                    m[2 + sy * dy, 2 + sx * dx] = 1
    elif kind == "corners":
        m = torch.zeros(3, 3)
        m[1, 1] = m[0, 0] = m[0, 2] = m[2, 0] = m[2, 2] = 1
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    return m


class MaskedConv2d(nn.Conv2d):
    """A convolution whose weight is multiplied by a fixed spatial mask at every forward."""

    def __init__(self, cin: int, cout: int, kind: str, dilation: int = 1):
        mask = _mask(kind)
        k = mask.shape[-1]
        super().__init__(cin, cout, k, padding=dilation * (k // 2), dilation=dilation)
        self.kind = kind
        # not persistent: the mask is architecture, not a weight, and keeping it out of the state dict means a
        # weights file cannot carry a wrong one
        self.register_buffer("mask", mask.view(1, 1, k, k), persistent=False)

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.masked_weight(), self.bias, self.stride, self.padding, self.dilation)

    def forward_live(self, x: torch.Tensor) -> torch.Tensor:
        """Same function, only the live taps: dead taps get no gradient and cost no MACs."""
        w = self.weight
        if self.kind == "first":  # 8 of 9 live on C input channels: splitting would cost more than it saves
            return self.forward(x)
        c = w.shape[-1] // 2
        y = F.conv2d(x, w[:, :, c : c + 1, c : c + 1], self.bias)
        if self.kind == "knight":  # (±1, ±2) and (±2, ±1) as two 2×2 convs with dilations (2, 4) and (4, 2)
            y = y + F.conv2d(x, w[:, :, 1::2, 0::4], None, 1, (1, 2), (2, 4))
            return y + F.conv2d(x, w[:, :, 0::4, 1::2], None, 1, (2, 1), (4, 2))
        # corners (±3, ±3) of the dilation-3 3×3 → one 2×2 conv with dilation 6
        return y + F.conv2d(x, w[:, :, 0::2, 0::2], None, 1, 3, 6)


def _prelu(f: int) -> nn.PReLU:
    return nn.PReLU(f, init=0.0)


class Residual(nn.Module):
    """PReLU((x + 1×1(PReLU(1×1(x)))) / 2)."""

    def __init__(self, f: int):
        super().__init__()
        self.conv1 = nn.Conv2d(f, f, 1)
        self.act1 = _prelu(f)
        self.conv2 = nn.Conv2d(f, f, 1)
        self.act2 = _prelu(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2((x + self.conv2(self.act1(self.conv1(x)))) / 2)


TAPS = ("live", "dense")


def mean4(x: torch.Tensor) -> torch.Tensor:
    """The 4-neighbour mean with reflect padding: a blind predictor with zero parameters (reflection never maps a
    neighbour onto the centre; replicate padding would)."""
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    return (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) * 0.25


# the blind bilateral's constants (radius, range h, spatial σ): picked on the noisy hold-out photos (28.00 dB) from a
# small grid (r 1-4, h 0.02-0.15, s 1-9). The training photos' best grid point (r 4, h 0.05, s 2.5) scores 27.93 dB
# there, so that choice is worth 0.07 dB of the hold-out figures, against the BSN's +1.48 dB over mean4 (docs/train.md)
BILATERAL_RADIUS, BILATERAL_H, BILATERAL_SIGMA = 3, 0.1, 1.5


def bilateral_taps(channels: int, r: int = BILATERAL_RADIUS) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot depthwise kernels picking the (2r+1)² − 1 neighbours (the centre left out), and their spatial weights."""
    offs = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
    k = torch.zeros(len(offs), 1, 2 * r + 1, 2 * r + 1)
    for i, (dy, dx) in enumerate(offs):
        k[i, 0, r + dy, r + dx] = 1.0
    spatial = torch.tensor([-(dy * dy + dx * dx) / (2 * BILATERAL_SIGMA ** 2) for dy, dx in offs])
    return k.repeat(channels, 1, 1, 1), spatial


def bilateral(x: torch.Tensor) -> torch.Tensor:
    """A blind bilateral filter: the (2r+1)² − 1 neighbours averaged with weights exp(−‖n − m‖² / h² − d² / 2s²),
    where m is the 4-neighbour mean (itself blind) standing in for the unseen centre. Flat regions average ~20
    neighbours, edges keep to their side; no weight or guide ever reads the centre pixel, so it stays blind.
    Zero padding with out-of-image taps weighted out: reflect padding wider than 1 maps a neighbour onto the centre."""
    n, c, h, w = x.shape
    r = BILATERAL_RADIUS
    k, spatial = bilateral_taps(c, r)
    taps = F.conv2d(F.pad(x, (r, r, r, r)), k.to(x), groups=c).view(n, c, -1, h, w)
    inside = F.conv2d(F.pad(torch.ones_like(x[:, :1]), (r, r, r, r)), k[: k.shape[0] // c].to(x)).unsqueeze(1)
    d2 = ((taps - mean4(x).unsqueeze(2)) ** 2).mean(1, keepdim=True)  # [N, 1, T, H, W]
    logits = spatial.to(x).view(1, 1, -1, 1, 1) - d2 / BILATERAL_H ** 2 + (inside - 1.0) * 1e4
    wts = torch.softmax(logits, dim=2)  # softmax = exp / sum, without overflow
    return (taps * wts).sum(2)


BASELINES = ("none", "mean4", "bilateral")
_BASELINE_FN = {"mean4": mean4, "bilateral": bilateral}


def normalize_arch(arch: dict) -> dict:
    """An architecture dict in canonical form; ``baseline`` absent means "none" (weights from before it existed)."""
    out = {"channels": arch["channels"], "layers": arch["layers"], "filters": arch["filters"],
           "baseline": arch.get("baseline", "none")}
    if out["baseline"] not in BASELINES:
        raise ValueError(f"unknown BSN baseline {out['baseline']!r}; use one of {', '.join(BASELINES)}")
    return out


class FBINet(nn.Module):
    """Blind-spot network: [N, C, H, W] → [N, C, H, W]; output pixel (i, j) never depends on input pixel (i, j).

    ``layers`` counts the masked convolutions (≥ 2), ``filters`` the feature width. FBI-Denoiser uses 17 and 64.
    ``baseline`` and ``taps``: see the module docstring.
    """

    def __init__(self, channels: int = 3, layers: int = 17, filters: int = 64, baseline: str = "none",
                 taps: str = "live"):
        super().__init__()
        if channels < 1 or layers < 2 or filters < 1:
            raise ValueError(f"FBINet needs channels >= 1, layers >= 2, filters >= 1; got {channels}, {layers}, {filters}")
        if baseline not in BASELINES or taps not in TAPS:
            raise ValueError(f"FBINet: baseline must be one of {BASELINES}, taps one of {TAPS}; got {baseline!r}, {taps!r}")
        self.channels, self.layers, self.filters, self.baseline, self.taps = channels, layers, filters, baseline, taps
        self.convs = nn.ModuleList(
            [MaskedConv2d(channels, filters, "first"), MaskedConv2d(filters, filters, "knight")]
            + [MaskedConv2d(filters, filters, "corners", dilation=3) for _ in range(layers - 2)]
        )
        self.raw_acts = nn.ModuleList(_prelu(filters) for _ in range(layers))
        # layer 1 feeds its raw features straight into its residual block; layers 2..L first average with the
        # previous out features and pass a PReLU
        self.mix_acts = nn.ModuleList(_prelu(filters) for _ in range(layers - 1))
        self.residuals = nn.ModuleList(Residual(filters) for _ in range(layers))
        self.head_act = _prelu(filters)
        self.head_residual = Residual(filters)
        self.head = nn.Conv2d(filters, channels, 1)
        if baseline != "none":  # start exactly at the baseline
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def arch(self) -> dict:
        return {"channels": self.channels, "layers": self.layers, "filters": self.filters, "baseline": self.baseline}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = (lambda i, t: self.convs[i].forward_live(t)) if self.taps == "live" else (lambda i, t: self.convs[i](t))
        raw = self.raw_acts[0](conv(0, x))
        out = self.residuals[0](raw)
        total = out
        for i in range(1, self.layers):
            raw = self.raw_acts[i](conv(i, raw))
            out = self.residuals[i](self.mix_acts[i - 1]((raw + out) / 2))
            total = total + out
        y = self.head(self.head_residual(self.head_act(total / self.layers)))
        return y if self.baseline == "none" else y + _BASELINE_FN[self.baseline](x)

    def receptive_radius(self) -> int:
        """Largest |offset| any output reads: 1 + 2 + 3·(L − 2)."""
        return 3 + 3 * (self.layers - 2)
