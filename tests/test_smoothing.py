import numpy as np
import pytest
import torch

from ncis_deploy.errors import UserError
from ncis_deploy.model.smoothing import (GaussianSmoothing, fused_matrix, gaussian_kernel1d, reflect_index,
                                         smooth_fused, smooth_iterative)


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 3, 64, 48), (1, 3, 224, 224), (1, 3, 2, 2), (1, 3, 2, 9),
                                   (1, 3, 3, 11)])
@pytest.mark.parametrize("iterations", [1, 3, 10])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_fused_equals_iterative(shape, iterations, kernel_size):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    ref = smooth_iterative(x, kernel_size, 1.0, iterations)
    fused = smooth_fused(x, kernel_size, 1.0, iterations)
    assert fused.shape == x.shape
    assert (fused - ref).abs().max().item() <= 1e-5


def numpy_reference(img: np.ndarray, kernel_size: int, sigma: float, iterations: int) -> np.ndarray:
    """An independent oracle: np.pad's 'reflect' mode reflects repeatedly when the pad exceeds the size."""
    g = gaussian_kernel1d(kernel_size, sigma)
    r = kernel_size // 2
    x = img.astype(np.float64)
    for _ in range(iterations):
        p = np.pad(x, ((r, r), (0, 0)), mode="reflect")
        x = sum(g[i] * p[i : i + x.shape[0]] for i in range(kernel_size))
        p = np.pad(x, ((0, 0), (r, r)), mode="reflect")
        x = sum(g[i] * p[:, i : i + x.shape[1]] for i in range(kernel_size))
    return x


@pytest.mark.parametrize("h,w", [(2, 2), (3, 5), (4, 3), (7, 6)])
def test_reflection_of_reflection_matches_numpy(h, w):
    # kernel 9 (radius 4) on images smaller than the radius: the pad reflects the reflected border again
    img = np.random.default_rng(1).random((h, w))
    want = numpy_reference(img, 9, 2.0, 3)
    x = torch.from_numpy(img)[None, None]
    assert np.abs(smooth_iterative(x, 9, 2.0, 3)[0, 0].numpy() - want).max() < 1e-12
    assert np.abs(smooth_fused(x, 9, 2.0, 3)[0, 0].numpy() - want).max() < 1e-12


def test_reflect_index_is_numpy_reflect():
    for n in (2, 3, 5):
        for r in (1, 4, 11):
            want = np.pad(np.arange(n), r, mode="reflect")
            assert reflect_index(n, r).tolist() == want.tolist()


def test_fused_matrix_properties():
    m = fused_matrix(17, 5, 1.5, 4)
    assert np.allclose(m.sum(axis=1), 1.0)  # smoothing preserves constants
    assert (m >= 0).all()  # and never leaves [0, 1]
    assert np.allclose(fused_matrix(8, 3, 1.0, 0), np.eye(8))


def test_gs_reduces_zero_mean_noise():
    g = torch.Generator().manual_seed(0)
    clean = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64).contiguous()
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=g)
    out = smooth_fused(noisy, 3, 1.0, 3)
    assert (out - clean).pow(2).mean() < 0.25 * (noisy - clean).pow(2).mean()


def test_module_and_validation():
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(GaussianSmoothing(3, 1.0, 0)(x), x)
    a = GaussianSmoothing(5, 1.0, 3, fused=True)(x)
    b = GaussianSmoothing(5, 1.0, 3, fused=False)(x)
    assert (a - b).abs().max() < 1e-6
    for bad in [dict(kernel_size=4, sigma=1.0), dict(kernel_size=3, sigma=0.0), dict(kernel_size=3, sigma=-1.0)]:
        with pytest.raises(UserError):
            GaussianSmoothing(**bad, iterations=1)
    with pytest.raises(UserError, match="iterations"):
        GaussianSmoothing(3, 1.0, -1)
    with pytest.raises(UserError, match=">= 2"):
        smooth_fused(torch.rand(1, 3, 1, 5), 3, 1.0, 1)
