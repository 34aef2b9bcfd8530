"""Our own batched, seeded attacks on a differentiable model ``f: [N,3,H,W] in [0,1] -> logits``.

What makes a threat model is *which* ``f`` the attack differentiates, not the attack code:
- ``purifier-blind`` (the NCIS paper's setting): ``f`` = the classifier alone; the result is then purified;
- ``transfer``: ``f`` = surrogate classifier(s) (:func:`ensemble`), the target is never queried;
- ``adaptive``: ``f`` = purifier + classifier (:func:`full_gradient`), or the BPDA approximation (:func:`bpda`).

Every attack keeps ``|x_adv - x| <= eps`` (ℓ∞) or ``||x_adv - x||_2 <= eps`` per image, and ``x_adv`` in [0, 1].
Randomness (random start, DI) comes from a ``torch.Generator`` seeded by ``seed`` and the batch index, so a run is
reproducible and does not depend on what ran before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ncis_deploy.errors import UserError

Model = Callable[[torch.Tensor], torch.Tensor]
THREAT_MODELS = ("purifier-blind", "transfer", "adaptive")
NORMS = ("linf", "l2")


@dataclass
class AttackOutput:
    x_adv: torch.Tensor
    correct: torch.Tensor  # bool [N]: the attacked model still predicts y on x_adv
    # fraction of images still correct on the iterate of each step (step 0 = the start point); used by the
    # "more steps never help the defender" sanity check
    trajectory: list[float] = field(default_factory=list)


def check_eps(eps: float, norm: str = "linf") -> None:
    if norm not in NORMS:
        raise UserError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    if not (0.0 <= eps <= 1.0) and norm == "linf":
        raise UserError(f"epsilon must be in [0, 1] (pixel scale; e.g. 8/255 = 0.0314), got {eps:g}")
    if eps < 0:
        raise UserError(f"epsilon must be >= 0, got {eps:g}")


def _norm2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Back into the ε-ball around x, then into the [0, 1] box (the box keeps the ball: both are convex and x is
    inside both, and clamping coordinates only shrinks |delta|)."""
    d = x_adv - x
    if norm == "linf":
        d = d.clamp(-eps, eps)
    else:
        d = d * torch.clamp(eps / _norm2(d), max=1.0)
    return (x + d).clamp(0.0, 1.0)


def _random_start(x, eps, norm, gen):
    if norm == "linf":
        d = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    else:
        d = torch.randn(x.shape, generator=gen)
        r = torch.rand(x.shape[0], generator=gen).view(-1, 1, 1, 1) ** (1.0 / d[0].numel())
        d = d / _norm2(d) * eps * r
    return project(x + d.to(x.device), x, eps, norm)


def _step(x_adv, g, alpha, norm):
    return x_adv + alpha * (g.sign() if norm == "linf" else g / _norm2(g))


def _grad(f: Model, x_adv: torch.Tensor, y: torch.Tensor, eot: int, transform=None):
    """Gradient of the summed cross-entropy, averaged over ``eot`` forward passes (EOT: only useful when a stage
    of f is random; for deterministic purifiers eot=1 is exact). Also returns the logits of the first pass."""
    g, first = torch.zeros_like(x_adv), None
    for _ in range(max(1, eot)):
        xa = x_adv.detach().requires_grad_(True)
        logits = f(transform(xa) if transform else xa)
        loss = F.cross_entropy(logits, y, reduction="sum")
        g += torch.autograd.grad(loss, xa)[0]
        if first is None:
            first = logits.detach()
    return g / max(1, eot), first


def _batches(n, batch):
    return [(i, min(i + batch, n)) for i in range(0, n, batch)]


def pgd(f: Model, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10, alpha: float | None = None,
        norm: str = "linf", random_start: bool = True, seed: int = 0, eot: int = 1, batch: int = 8,
        progress: Callable[[int], None] | None = None) -> AttackOutput:
    """Projected gradient descent (Madry et al.) maximising cross-entropy; alpha defaults to 2.5·eps/steps.
    ``steps=1, random_start=False, alpha=eps`` is FGSM (see :func:`fgsm`)."""
    check_eps(eps, norm)
    if steps < 1:
        raise UserError(f"attack steps must be >= 1, got {steps}")
    alpha = 2.5 * eps / steps if alpha is None else alpha

    def start(xb, gen):
        return (_random_start(xb, eps, norm, gen) if random_start and eps > 0 else xb.clone()), None

    def update(x_adv, xb, yb, gen, state):
        g, logits = _grad(f, x_adv, yb, eot)
        return project(_step(x_adv, g, alpha, norm), xb, eps, norm).detach(), state, logits

    return _iterate(f, x, y, steps, batch, seed, progress, start, update)


def _iterate(f: Model, x, y, steps: int, batch: int, seed: int, progress, start, update) -> AttackOutput:
    """The loop every iterative attack shares: batches, one seeded generator per batch (so results do not depend on
    what ran before), ``steps`` updates with the accuracy trajectory before each, and the final evaluation.
    ``start(xb, gen) -> (x_adv, state)``; ``update(x_adv, xb, yb, gen, state) -> (x_adv, state, logits)``."""
    advs, corrects, traj = [], [], torch.zeros(steps + 1)
    for bi, (a, b) in enumerate(_batches(x.shape[0], batch)):
        xb, yb = x[a:b], y[a:b]
        gen = torch.Generator().manual_seed(seed * 100003 + bi)
        x_adv, state = start(xb, gen)
        for t in range(steps):
            x_adv, state, logits = update(x_adv, xb, yb, gen, state)
            traj[t] += (logits.argmax(1) == yb).sum()
            if progress:
                progress(b - a)
        with torch.no_grad():
            ok = f(x_adv).argmax(1) == yb
        traj[steps] += ok.sum()
        advs.append(x_adv)
        corrects.append(ok)
    return AttackOutput(torch.cat(advs), torch.cat(corrects), (traj / x.shape[0]).tolist())


def fgsm(f: Model, x, y, eps: float, batch: int = 8, progress=None) -> AttackOutput:
    """Fast gradient sign method (Goodfellow et al.): one ℓ∞ step of size eps from x."""
    return pgd(f, x, y, eps, steps=1, alpha=eps, norm="linf", random_start=False, batch=batch, progress=progress)


def _diverse_input(x: torch.Tensor, gen: torch.Generator, prob: float, scale: float = 1.1) -> torch.Tensor:
    """DI (Xie et al.): with probability ``prob``, resize to a random size in [H, scale·H) and pad randomly to
    scale·H, then resize back to H×W so any classifier input size works."""
    if torch.rand((), generator=gen).item() >= prob:
        return x
    h, w = x.shape[-2:]
    big_h, big_w = int(h * scale), int(w * scale)
    rh = int(torch.randint(h, max(big_h, h + 1), (), generator=gen))
    rw = int(torch.randint(w, max(big_w, w + 1), (), generator=gen))
    z = F.interpolate(x, size=(rh, rw), mode="nearest")
    top = int(torch.randint(0, big_h - rh + 1, (), generator=gen))
    left = int(torch.randint(0, big_w - rw + 1, (), generator=gen))
    z = F.pad(z, (left, big_w - rw - left, top, big_h - rh - top))
    return F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)


def _ti_kernel(size: int, sigma: float, channels: int) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k = torch.outer(g, g)
    return (k / k.sum()).expand(channels, 1, size, size).contiguous()


def mifgsm(f: Model, x, y, eps: float, steps: int = 10, alpha: float | None = None, decay: float = 1.0,
           di_prob: float = 0.5, ti_size: int = 7, ti_sigma: float = 3.0, seed: int = 0, batch: int = 8,
           progress=None) -> AttackOutput:
    """MI-FGSM (Dong et al.) with DI (diverse inputs) and TI (translation-invariant, Gaussian-smoothed gradient):
    the transfer attack. Defaults follow the MI-FGSM/DI papers: 10 steps of eps/10, momentum 1.0, DI p=0.5.
    ``di_prob=0`` turns DI off, ``ti_size<=1`` turns TI off."""
    check_eps(eps, "linf")
    alpha = eps / steps if alpha is None else alpha
    kern = _ti_kernel(ti_size, ti_sigma, x.shape[1]).to(x) if ti_size > 1 else None

    def start(xb, gen):
        return xb.clone(), torch.zeros_like(xb)

    def update(x_adv, xb, yb, gen, mom):
        g, logits = _grad(f, x_adv, yb, 1, transform=lambda z: _diverse_input(z, gen, di_prob))
        if kern is not None:
            g = F.conv2d(g, kern, padding=ti_size // 2, groups=xb.shape[1])
        mom = decay * mom + g / g.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return project(x_adv + alpha * mom.sign(), xb, eps, "linf").detach(), mom, logits

    return _iterate(f, x, y, steps, batch, seed, progress, start, update)


# ------------------------------------------------------------------------------------------- what is attacked
def ensemble(models: list[Model]) -> Model:
    """Mean of the surrogates' logits (the ensemble transfer attack of Liu et al., used by NCIS on cloud APIs)."""
    if not models:
        raise UserError("an ensemble needs at least one surrogate classifier")
    return lambda x: torch.stack([m(x) for m in models]).mean(0)


def full_gradient(purifier: Model, classifier: Model) -> Model:
    """The whole defended system; exact gradients: GS is a pair of matrix products and the BSN is a CNN. The
    clamps have zero gradient only where a pixel saturates, as in the deployed artifact."""
    return lambda x: classifier(purifier(x))


def bpda(purifier: Model, classifier: Model) -> Model:
    """BPDA (Athalye et al. 2018): the purifier runs forward, the backward pass treats it as the identity."""

    def f(x):
        return classifier(x + (purifier(x) - x).detach())

    return f


def eot(f: Model, samples: int) -> Model:
    """EOT over a random stage: the mean of ``samples`` forward passes (their gradients average too). Our presets
    are deterministic, so the harness only uses it when asked (``--eot``)."""
    if samples <= 1:
        return f
    return lambda x: torch.stack([f(x) for _ in range(samples)]).mean(0)
