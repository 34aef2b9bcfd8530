"""onnx's reference evaluator as a runner: the graph executed op by op in NumPy, for checking, never for serving.

It runs what nothing else on a CPU can: a ``--smoothing plugin`` export, whose ``trt.plugins::NcisGaussianSmooth``
nodes are computed by the NumPy op of :mod:`ncis_deploy.exporters.plugin_ref`. It is slow (its convolutions are
NumPy loops: about 1.2 s for one 64x64 image through the shipped BSN), which is why it is not one of the
deployment ``BACKENDS``.
"""

from __future__ import annotations

import os

import numpy as np

from ncis_deploy.errors import UserError
from ncis_deploy.exporters.plugin_ref import reference_evaluator
from ncis_deploy.runners.base import Runner, input_spec_from_onnx


class ReferenceRunner(Runner):
    """Run an ONNX model (a path, serialized bytes or an ``onnx.ModelProto``) on ``onnx.reference``."""

    name = "reference"

    def __init__(self, model, *, check_range: bool = True):
        super().__init__(check_range=check_range)
        self.model = model
        self.evaluator = None

    def activate_impl(self) -> None:
        import onnx

        model = self.model
        if isinstance(model, (str, os.PathLike)):
            try:
                model = onnx.load(str(model))
            except Exception as e:  # FileNotFoundError, DecodeError...
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise UserError(f"cannot read ONNX model {self.model}: {first}") from None
        elif isinstance(model, bytes):
            model = onnx.load_from_string(model)
        self.input_spec = input_spec_from_onnx(model)
        self.evaluator = reference_evaluator(model)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self.evaluator.run(None, {self.input_spec.name: x})[0]

    def deactivate_impl(self) -> None:
        self.evaluator = None
