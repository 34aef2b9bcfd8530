import pytest
import torch

from ncis_deploy import load_purifier
from ncis_deploy.model.bsn import FBINet

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
    assert (net.layers, net.filters, net.channels) == (17, 64, 3)
    assert sum(p.numel() for p in net.parameters()) == 812_611
    assert net.receptive_radius() == 48


@pytest.mark.parametrize("layers,filters,seed", [(2, 4, 0), (5, 8, 1), (17, 8, 2)])
def test_blind_spot_random_weights(layers, filters, seed):
    net = randomize(FBINet(3, layers, filters), seed)
    for centre, neighbours in centre_and_neighbour_grads(net):
        assert centre <= 1e-7
        assert neighbours > 1e-6


def test_blind_spot_shipped_weights():
    net = load_purifier("ncis").bsn
    assert net is not None
    for centre, neighbours in centre_and_neighbour_grads(net):
        assert centre <= 1e-7
        assert neighbours > 1e-6


def test_blind_spot_is_not_vacuous():
    # without masks the same check must fail: the centre tap would be live
    net = randomize(FBINet(3, 3, 4), 0)
    for conv in net.convs:
        conv.mask.fill_(1.0)
    assert max(c for c, _ in centre_and_neighbour_grads(net)) > 1e-3


def test_receptive_field_taps():
    # layer 1 alone reads the 8 neighbours; with layer 2 the knight moves of those
    net = randomize(FBINet(1, 2, 2), 5).double()
    x = torch.zeros(1, 1, 15, 15, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(net(x)[0, 0, 7, 7], x)
    live = {(i - 7, j - 7) for i in range(15) for j in range(15) if g[0, 0, i, j] != 0}
    assert (0, 0) not in live
    assert {(0, 1), (1, 1), (-1, 0)} <= live
    assert max(max(abs(a), abs(b)) for a, b in live) == net.receptive_radius() == 3
