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


class FBINet(nn.Module):
    """Blind-spot network: [N, C, H, W] → [N, C, H, W]; output pixel (i, j) never depends on input pixel (i, j).

    ``layers`` counts the masked convolutions (≥ 2), ``filters`` the feature width. FBI-Denoiser uses 17 and 64.
    """

    def __init__(self, channels: int = 3, layers: int = 17, filters: int = 64):
        super().__init__()
        if channels < 1 or layers < 2 or filters < 1:
            raise ValueError(f"FBINet needs channels >= 1, layers >= 2, filters >= 1; got {channels}, {layers}, {filters}")
        self.channels, self.layers, self.filters = channels, layers, filters
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

    @property
    def arch(self) -> dict:
        return {"channels": self.channels, "layers": self.layers, "filters": self.filters}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.raw_acts[0](self.convs[0](x))
        out = self.residuals[0](raw)
        total = out
        for i in range(1, self.layers):
            raw = self.raw_acts[i](self.convs[i](raw))
            out = self.residuals[i](self.mix_acts[i - 1]((raw + out) / 2))
            total = total + out
        y = self.head_residual(self.head_act(total / self.layers))
        return self.head(y)

    def receptive_radius(self) -> int:
        """Largest |offset| any output reads: 1 + 2 + 3·(L − 2)."""
        return 3 + 3 * (self.layers - 2)
