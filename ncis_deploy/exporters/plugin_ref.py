"""The TensorRT plugin op ``NcisGaussianSmooth``: its ONNX spelling and a NumPy reference of what it computes.

An ``export --smoothing plugin`` graph has one node per GS stage::

    trt.plugins::NcisGaussianSmooth(x) -> y      attributes kernel_size (int), sigma (float), iterations (int),
                                                  plugin_version "1", plugin_namespace "ncis"

TensorRT's ONNX parser maps a node it has no importer for to the registered plugin creator named by ``op_type``,
``plugin_version`` and ``plugin_namespace`` (REFERENCE.md §4); ONNX Runtime's TensorRT EP routes the
``trt.plugins`` domain to TensorRT. The C++ implementation is ``kernels/plugin/`` (IPluginV3), the CUDA kernel
``ncis_deploy/csrc/gaussian_smooth.cu``.

ONNX Runtime on the CPU cannot run that node, so exports check plugin graphs with ``onnx.reference``'s evaluator and
the NumPy op below (:func:`reference_evaluator`). The op is the float64 fused form of
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


# ------------------------------------------------------------------------------------------------------ parity
# The reference evaluator runs convolutions in NumPy: about 1.2 s for one 64x64 image through the shipped BSN, 15 s
# at 224x224, and ~20x slower in float16. Plugin graphs are therefore checked on crops of at most these sides. That
# checks the artifact itself, not a re-export: no node of a plugin graph depends on the spatial size (the plugin
# reflects at whatever H, W it gets; the BSN is convolutions), so the graph computes the same function at every size.
REFERENCE_MAX_SIDE = 64
REFERENCE_MAX_SIDE_FP16 = 24


def reference_parity(purifier, model, height: int, width: int, *, dynamic_hw: bool, large_batch: int,
                     tolerance: float | None = 1e-5, fp16: bool = False) -> dict:
    """Run a plugin graph on the reference evaluator and compare it with what ONNX Runtime computes.

    float32: against the standard (matmul) export of the same purifier on ONNX Runtime CPU at each checked size,
    failing beyond ``tolerance``; that standard export is itself checked against PyTorch on the same inputs
    (``standard_vs_pytorch_max_abs``), so the plugin graph is tied to PyTorch too. ``fp16``: one small random image
    against PyTorch in float32, recorded only (as for the standard FP16 export).
    """
    import torch

    from ncis_deploy.exporters.onnx import build_onnx
    from ncis_deploy.exporters.parity import FP32_TOLERANCE, ParityError, check_parity, ort_session, parity_inputs

    evaluator = reference_evaluator(model)
    side = REFERENCE_MAX_SIDE_FP16 if fp16 else REFERENCE_MAX_SIDE
    sizes = [(min(height, side), min(width, side))] + ([(33, 50)] if dynamic_hw and not fp16 else [])
    rows, standard_max = [], 0.0
    for h, w in sizes:
        cases = parity_inputs(h, w, False, large_batch)
        if fp16:
            cases = cases[:1]
            with torch.no_grad():
                refs = [purifier(torch.from_numpy(x)).numpy() for _, x in cases]
        else:
            standard = build_onnx(purifier, h, w).SerializeToString()
            standard_max = max(standard_max, check_parity(purifier, standard, cases, FP32_TOLERANCE,
                                                          label="standard ONNX")["max_abs"])
            session = ort_session(standard)
            refs = [session.run(None, {"input": x})[0] for _, x in cases]
        for (name, x), ref in zip(cases, refs):
            got = evaluator.run(None, {"input": x})[0]
            err = np.abs(got.astype(np.float64) - ref)
            rows.append({"case": name, "max_abs": float(err.max()), "mean_abs": float(err.mean())})
            if tolerance is not None and not err.max() <= tolerance:
                raise ParityError(f"the plugin ONNX ({PLUGIN_NAME} on the reference evaluator) differs from the standard "
                                  f"export by {err.max():.3g} (> {tolerance:g}) on {name}; the export was not written. "
                                  "This is a bug: please report it")
    result = {"backend": f"onnx-reference-evaluator ({PLUGIN_NAME} in NumPy)",
              "reference": "pytorch-cpu-fp32" if fp16 else "standard (matmul) ONNX on onnxruntime-cpu",
              "tolerance": tolerance, "max_abs": max(r["max_abs"] for r in rows), "cases": rows,
              "checked_at": [list(s) for s in sizes]}
    if not fp16:
        result["standard_vs_pytorch_max_abs"] = standard_max
    return result
