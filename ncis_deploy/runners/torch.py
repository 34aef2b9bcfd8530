"""The PyTorch backend: the reference every exported artifact is compared against.

It wraps :func:`ncis_deploy.load_purifier` so that ``torch`` / ``onnxruntime`` / ``tensorrt`` runners all take and
return numpy, and a parity check is a plain ``np.abs(a - b).max()``.
"""

from __future__ import annotations

import os

import numpy as np

from ncis_deploy.errors import UserError
from ncis_deploy.runners.base import InputSpec, Runner


class TorchRunner(Runner):
    """Run a purifier (a preset name, a directory, a config, or an already built ``nn.Module``) under torch.

    A module passed in is moved to ``device`` in place. float32 only: that is what the purifier computes in.
    """

    name = "torch"

    def __init__(self, purifier_or_source=None, device: str = "cpu", weights: str | os.PathLike | None = None, *,
                 check_range: bool = True):
        super().__init__(check_range=check_range)
        self.source = purifier_or_source
        self.device = str(device)
        self.weights = weights
        self.purifier = None
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise UserError(f"torch device {device!r} is not supported; use 'cpu', 'cuda' or 'cuda:N'")

    def activate_impl(self) -> None:
        import torch
        from torch import nn

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {self.device} was asked for but PyTorch sees no CUDA GPU (torch "
                            f"{torch.__version__}); use device 'cpu' or install a CUDA build of torch")
        if isinstance(self.source, nn.Module):
            if self.weights is not None:
                raise UserError("weights= only applies when the purifier is loaded from a preset or directory")
            purifier = self.source.to(self.device).eval()
        else:
            from ncis_deploy.model.purifier import load_purifier

            purifier = load_purifier(self.source, device=self.device, weights=self.weights)
        self.purifier = purifier
        self.input_spec = InputSpec(channels=int(getattr(purifier, "channels", 3)))

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            y = self.purifier(torch.from_numpy(x).to(self.device))
        return y.to("cpu", torch.float32).numpy()

    def deactivate_impl(self) -> None:
        self.purifier = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
