"""Iterative Gaussian smoothing (GS) and its exact fused form.

One GS iteration reflect-pads the image by the kernel radius ``r`` and convolves every channel with a 1-D
Gaussian along H, then along W. Each step is linear along one axis, so T iterations along an axis of length n are
one n×n matrix ``M = A^T`` where ``A`` is a single padded convolution written as a matrix. The fused form applies
``M_H @ x @ M_W^T``: two matrix products instead of 2·T padded convolutions, and exact (to float rounding) for any
n ≥ 2, including n ≤ T·r where the padding reflects the already reflected border again.

Reflection here is the "reflect" mode of NumPy/PyTorch (the border pixel is not repeated). PyTorch's own
``F.pad(mode="reflect")`` refuses pads ≥ the size, so the reference gathers with an explicit index instead.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ncis_deploy.errors import UserError


def gaussian_kernel1d(kernel_size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps (float64), centred, odd length."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise UserError(f"GS kernel_size must be a positive odd integer, got {kernel_size}")
    if not sigma > 0 or not math.isfinite(sigma):
        raise UserError(f"GS sigma must be a positive number, got {sigma}")
    r = kernel_size // 2
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def reflect_index(n: int, radius: int) -> np.ndarray:
    """Source index of every position in ``[-radius, n - 1 + radius]`` under repeated reflection."""
    if n < 2:
        raise UserError(f"Gaussian smoothing needs every spatial size >= 2 (reflection of a single pixel is undefined), got {n}")
    period = 2 * (n - 1)
    i = np.mod(np.arange(-radius, n + radius), period)
    return np.where(i >= n, period - i, i)


@lru_cache(maxsize=256)
def _fused_matrix_np(n: int, kernel_size: int, sigma: float, iterations: int) -> np.ndarray:
    g = gaussian_kernel1d(kernel_size, sigma)
    r = kernel_size // 2
    src = reflect_index(n, r)
    a = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        # output i reads padded positions i .. i + 2r, i.e. source pixels src[i : i + 2r + 1]
        np.add.at(a[i], src[i : i + 2 * r + 1], g)
    m = np.linalg.matrix_power(a, iterations)
    m.setflags(write=False)
    return m


def fused_matrix(n: int, kernel_size: int, sigma: float, iterations: int) -> np.ndarray:
    """The n×n float64 matrix applying ``iterations`` reflect-padded smoothings along one axis: ``y = M @ x``."""
    if iterations < 0:
        raise UserError(f"GS iterations must be >= 0, got {iterations}")
    return _fused_matrix_np(int(n), int(kernel_size), float(sigma), int(iterations))


def smooth_iterative(x: torch.Tensor, kernel_size: int, sigma: float, iterations: int) -> torch.Tensor:
    """Reference: ``iterations`` times reflect-pad, then separable depthwise convolution. x is [N, C, H, W]."""
    if iterations < 0:
        raise UserError(f"GS iterations must be >= 0, got {iterations}")
    n, c, h, w = x.shape
    r = kernel_size // 2
    g = torch.as_tensor(gaussian_kernel1d(kernel_size, sigma), dtype=x.dtype, device=x.device)
    kh = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ih = torch.as_tensor(reflect_index(h, r), device=x.device)
    iw = torch.as_tensor(reflect_index(w, r), device=x.device)
    for _ in range(iterations):
        x = F.conv2d(x.index_select(2, ih), kh, groups=c)
        x = F.conv2d(x.index_select(3, iw), kw, groups=c)
    return x


def smooth_fused(x: torch.Tensor, kernel_size: int, sigma: float, iterations: int) -> torch.Tensor:
    """Exact fused form of :func:`smooth_iterative`: ``M_H @ x @ M_W^T`` per image and channel."""
    h, w = x.shape[-2:]
    mh = torch.tensor(fused_matrix(h, kernel_size, sigma, iterations), dtype=x.dtype, device=x.device)
    mw = torch.tensor(fused_matrix(w, kernel_size, sigma, iterations), dtype=x.dtype, device=x.device)
    return torch.matmul(torch.matmul(mh, x), mw.transpose(0, 1))


GS_IMPLEMENTATIONS = ("auto", "matmul", "iterative", "cuda")  # how GaussianSmoothing computes, not where a purifier is deployed
log = logging.getLogger(__name__)


class GaussianSmoothing(torch.nn.Module):
    """A GS stage. ``fused=True`` (default) runs the exact two-matmul form, ``False`` the iterative reference.

    ``backend`` overrides that choice: "matmul" (the fused form), "iterative" (the reference), "cuda" (the one-launch
    kernel of :mod:`ncis_deploy.kernels`: CUDA tensors, no autograd) or "auto": the kernel where it applies -- a
    float32/float16 CUDA tensor that needs no gradient, with the kernel loadable -- and the ``fused`` choice
    everywhere else (so attacks that differentiate through the purifier keep working). Default: from ``fused``;
    "auto" is opt-in until the kernel has been checked on a GPU (kernels/README.md).
    """

    def __init__(self, kernel_size: int = 3, sigma: float = 1.0, iterations: int = 1, fused: bool = True,
                 backend: str | None = None):
        super().__init__()
        gaussian_kernel1d(kernel_size, sigma)  # validates
        if iterations < 0:
            raise UserError(f"GS iterations must be >= 0, got {iterations}")
        self.kernel_size, self.sigma, self.iterations, self.fused = int(kernel_size), float(sigma), int(iterations), fused
        self.set_backend(backend)

    def set_backend(self, backend: str | None) -> None:
        if backend is None:
            backend = "matmul" if self.fused else "iterative"
        if backend not in GS_IMPLEMENTATIONS:
            raise UserError(f"GS backend must be one of {', '.join(GS_IMPLEMENTATIONS)}, got {backend!r}")
        self.backend = backend

    def _cpu_form(self):
        return smooth_fused if self.fused else smooth_iterative

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.iterations == 0:
            return x
        args = (self.kernel_size, self.sigma, self.iterations)
        if self.backend in ("cuda", "auto"):
            from ncis_deploy import kernels

            if self.backend == "cuda":
                return kernels.gaussian_smooth_cuda(x, *args)
            if (x.is_cuda and x.dtype in (torch.float32, torch.float16) and not (torch.is_grad_enabled() and x.requires_grad)
                    and _kernel_usable(kernels)):
                try:
                    return kernels.gaussian_smooth_cuda(x, *args)
                except UserError as e:  # e.g. no runtime compiler: say so once, then stay on the matmul form
                    _KERNEL_FAILURE.append(str(e))
                    log.warning("GS backend 'auto': CUDA kernel unavailable, using the matmul form (%s)", e)
            return self._cpu_form()(x, *args)
        fn = smooth_fused if self.backend == "matmul" else smooth_iterative
        return fn(x, *args)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, sigma={self.sigma}, iterations={self.iterations}, fused={self.fused}, "
                f"backend={self.backend}")


_KERNEL_FAILURE: list[str] = []  # the first failure of backend "auto" to load the kernel, process-wide


def _kernel_usable(kernels) -> bool:
    return not _KERNEL_FAILURE and kernels.status()[0]
