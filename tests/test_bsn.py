import pytest
import torch

from ncis_deploy import load_purifier
import torch.nn.functional as F

from ncis_deploy.model import bsn as bsn_module
from ncis_deploy.model.bsn import FBINet, bilateral, mean4

# corners, borders, interior: the blind spot must hold where zero padding meets the masks too
PIXELS = [(0, 0), (0, 23), (23, 0), (23, 23), (0, 11), (11, 0), (23, 12), (12, 23), (11, 11), (5, 17), (17, 4), (3, 3)]


def randomize(net: FBINet, seed: int) -> FBINet:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def centre_and_neighbour_grads(net: FBINet, size: int = 24):
    x = torch.rand(1, net.channels, size, size, generator=torch.Generator().manual_seed(3), dtype=torch.float64,
                   requires_grad=True)
    net = net.double()
    y = net(x)
    out = []
    for i, j in PIXELS:
        (g,) = torch.autograd.grad(y[0, :, i, j].sum(), x, retain_graph=True)
        out.append((g[0, :, i, j].abs().max().item(), g[0].abs().sum().item() - g[0, :, i, j].abs().sum().item()))
    return out


def test_default_size_is_fbinet():
    net = FBINet()
    assert (net.layers, net.filters, net.channels, net.baseline) == (17, 64, 3, "none")
    assert sum(p.numel() for p in net.parameters()) == 812_611
    assert net.receptive_radius() == 48


@pytest.mark.parametrize("layers,filters,seed,baseline,taps", [
    (2, 4, 0, "none", "dense"), (5, 8, 1, "none", "live"), (17, 8, 2, "none", "live"),
    (2, 4, 3, "mean4", "live"), (5, 8, 4, "mean4", "dense"), (17, 8, 5, "mean4", "live"),
    (2, 4, 6, "bilateral", "live"), (5, 8, 7, "bilateral", "dense")])
def test_blind_spot_random_weights(layers, filters, seed, baseline, taps):
    net = randomize(FBINet(3, layers, filters, baseline=baseline, taps=taps), seed)
    for centre, neighbours in centre_and_neighbour_grads(net):
        assert centre <= 1e-7
        assert neighbours > 1e-6


def test_blind_spot_shipped_weights():
    net = load_purifier("ncis").bsn
    assert net is not None
    for centre, neighbours in centre_and_neighbour_grads(net):
        assert centre <= 1e-7
        assert neighbours > 1e-6


@pytest.mark.parametrize("taps", ["dense", "live"])
def test_blind_spot_is_not_vacuous(taps):
    # without masks the same check must fail: the centre tap would be live
    net = randomize(FBINet(3, 3, 4, taps=taps), 0)
    for conv in net.convs:
        conv.mask.fill_(1.0)
    assert max(c for c, _ in centre_and_neighbour_grads(net)) > 1e-3


def test_mean4_is_blind_and_not_vacuous():
    x = torch.rand(1, 3, 9, 11, dtype=torch.float64, requires_grad=True)
    for i, j in [(0, 0), (4, 5), (8, 10), (0, 5)]:
        (g,) = torch.autograd.grad(mean4(x)[0, :, i, j].sum(), x)
        assert g[0, :, i, j].abs().max() == 0
        assert g[0].abs().sum() == pytest.approx(3.0)  # four neighbours × 1/4 × 3 channels, reflection included
    y = mean4(x)
    assert y[0, 0, 4, 5].item() == pytest.approx(x[0, 0, [3, 5, 4, 4], [5, 5, 4, 6]].mean().item())


@pytest.mark.parametrize("baseline", ["none", "mean4"])
def test_live_taps_compute_the_dense_function(baseline):
    net = randomize(FBINet(3, 5, 8, baseline=baseline), 7).double()
    x = torch.rand(2, 3, 21, 26, dtype=torch.float64)
    net.taps = "dense"
    dense = net(x)
    net.taps = "live"
    assert torch.allclose(net(x), dense, atol=1e-12)


def test_live_taps_leave_dead_taps_untouched():
    # dead taps get no gradient in the live form: the weights file keeps the dense masked layout
    net = randomize(FBINet(3, 4, 4, taps="live"), 8)
    net(torch.rand(1, 3, 16, 16)).sum().backward()
    for conv in net.convs:
        assert conv.weight.grad[..., conv.mask[0, 0] == 0].abs().max() == 0
        assert conv.weight.grad[..., conv.mask[0, 0] == 1].abs().max() > 0


@pytest.mark.parametrize("baseline,fn", [("mean4", mean4), ("bilateral", bilateral)])
def test_residual_baseline_starts_at_the_baseline(baseline, fn):
    net = FBINet(3, 4, 8, baseline=baseline)
    x = torch.rand(2, 3, 16, 20)
    assert torch.allclose(net(x), fn(x), atol=1e-7)


def _centre_leaks(fn, size: int = 12) -> list[tuple[int, int]]:
    x = torch.rand(1, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
                   requires_grad=True)
    y = fn(x)
    leaks = []
    for i in range(size):
        for j in range(size):
            (g,) = torch.autograd.grad(y[0, :, i, j].sum(), x, retain_graph=True)
            if g[0, :, i, j].abs().max() > 0:
                leaks.append((i, j))
    return leaks


def test_bilateral_is_blind_at_every_pixel(monkeypatch):
    # every pixel, borders included: the 7×7 window reaches past the edge on 3 rows/columns
    assert _centre_leaks(bilateral) == []
    # and the check can fail: reflect padding (what mean4 uses) would fold a neighbour onto the centre near edges
    pad = F.pad
    monkeypatch.setattr(bsn_module.F, "pad", lambda t, p, mode="constant": pad(t, p, mode="reflect"))
    assert len(_centre_leaks(bilateral)) > 0


def test_bilateral_smooths_flat_regions_and_keeps_edges():
    flat = torch.full((1, 3, 16, 16), 0.5) + 0.03 * torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert (bilateral(flat) - 0.5).std() < 0.5 * (mean4(flat) - 0.5).std()  # averages ~20 neighbours, not 4
    step = torch.zeros(1, 3, 16, 16)
    step[..., 8:] = 1.0
    assert (bilateral(step) - step).abs()[..., 2:-2, :].max() < 1e-3 < (mean4(step) - step).abs().max()


def test_receptive_field_taps():
    # layer 1 alone reads the 8 neighbours; with layer 2 the knight moves of those
    net = randomize(FBINet(1, 2, 2), 5).double()
    x = torch.zeros(1, 1, 15, 15, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(net(x)[0, 0, 7, 7], x)
    live = {(i - 7, j - 7) for i in range(15) for j in range(15) if g[0, 0, i, j] != 0}
    assert (0, 0) not in live
    assert {(0, 1), (1, 1), (-1, 0)} <= live
    assert max(max(abs(a), abs(b)) for a, b in live) == net.receptive_radius() == 3
