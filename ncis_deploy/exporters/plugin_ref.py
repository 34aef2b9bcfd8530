"""The TensorRT plugin op ``NcisGaussianSmooth``: its ONNX spelling and a NumPy reference of what it computes.

An ``export --smoothing plugin`` graph has one node per GS stage::

    trt.plugins::NcisGaussianSmooth(x) -> y      attributes kernel_size (int), sigma (float), iterations (int),
                                                  plugin_version "1", plugin_namespace "ncis"

TensorRT's ONNX parser maps a node it has no importer for to the registered plugin creator named by ``op_type``,
``plugin_version`` and ``plugin_namespace`` (TensorRT developer guide, "Plugins" / ONNX parser); ONNX Runtime's TensorRT EP routes the
``trt.plugins`` domain to TensorRT. The C++ implementation is ``kernels/plugin/`` (IPluginV3), the CUDA kernel
``ncis_deploy/csrc/gaussian_smooth.cu``.

ONNX Runtime on the CPU cannot run that node, so exports check plugin graphs with ``onnx.reference``'s evaluator and
the NumPy op below (:func:`reference_evaluator`, run as the ``reference`` runner by
:func:`ncis_deploy.exporters.parity.reference_parity`). The op is the float64 fused form of
:func:`ncis_deploy.model.smoothing.smooth_iterative` (one H×H and one W×W matrix), cast back to the input's dtype.

``sigma`` is an ONNX FLOAT attribute, i.e. float32: the plugin smooths with σ rounded to float32 (a relative
change of at most 6e-8 in σ, far below the 1e-5 parity tolerance). The reference op uses the same rounded value.
"""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from ncis_deploy.exporters.gate import PLUGIN_DOMAIN
from ncis_deploy.model.smoothing import fused_matrix

PLUGIN_NAME = "NcisGaussianSmooth"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "ncis"
PLUGINS = frozenset({PLUGIN_NAME})  # what the TensorRT gate is told a plugin library provides


def plugin_attributes(stage: dict) -> dict:
    """The node attributes for one GS stage (``{"kernel_size", "sigma", "iterations"}``)."""
    return {"kernel_size": int(stage["kernel_size"]), "sigma": float(stage["sigma"]),
            "iterations": int(stage["iterations"]), "plugin_version": PLUGIN_VERSION,
            "plugin_namespace": PLUGIN_NAMESPACE}


def gaussian_smooth_reference(x: np.ndarray, kernel_size: int, sigma: float, iterations: int) -> np.ndarray:
    """NumPy reference of the plugin: [N, C, H, W] → same shape and dtype, computed in float64."""
    if x.ndim != 4:
        raise ValueError(f"{PLUGIN_NAME} takes [N, C, H, W], got shape {x.shape}")
    h, w = x.shape[-2:]
    mh = fused_matrix(h, kernel_size, sigma, iterations)
    mw = fused_matrix(w, kernel_size, sigma, iterations)
    y = np.matmul(np.matmul(mh, x.astype(np.float64)), mw.T)
    return y.astype(x.dtype)


class NcisGaussianSmooth(OpRun):
    """``onnx.reference`` implementation of ``trt.plugins::NcisGaussianSmooth`` (pass it in ``new_ops``)."""

    op_domain = PLUGIN_DOMAIN

    def _run(self, x, kernel_size=None, sigma=None, iterations=None, plugin_version=None, plugin_namespace=None):
        if plugin_version not in (None, PLUGIN_VERSION, PLUGIN_VERSION.encode()):
            raise ValueError(f"{PLUGIN_NAME}: no reference for plugin_version {plugin_version!r}")
        return (gaussian_smooth_reference(x, int(kernel_size), float(sigma), int(iterations)),)


def reference_evaluator(model):
    """An ``onnx.reference.ReferenceEvaluator`` that runs plugin graphs (standard ops + the NumPy plugin op)."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model, new_ops=[NcisGaussianSmooth])
