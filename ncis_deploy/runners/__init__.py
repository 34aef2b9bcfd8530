"""Backends that run a purifier artifact: one module per backend, one :class:`Runner` interface.

>>> from ncis_deploy.runners import make_runner
>>> with make_runner("onnxruntime", "export/model.onnx") as r:  # or "torch" with a preset, "tensorrt" with a .engine
...     y = r.infer(x)                                          # float32 NCHW in [0, 1] -> same shape

This package adds no heavy import of its own: onnxruntime, openvino, tensorrt and cuda-python are imported by the
backend module that needs them, when a runner is activated, so a machine without TensorRT can still run the ONNX
path.
(torch is imported by ``ncis_deploy`` itself; the torch-free path is ``export/python/purify_onnx.py``.)

Checking is done with runners too: ``make_runner("reference", model)`` runs a graph on onnx's reference evaluator
(plugin graphs included), and :func:`ncis_deploy.runners.compare.compare` runs the same cases through several
runners and reports their differences; every parity figure of the package comes from it.
"""

from __future__ import annotations

import importlib

from ncis_deploy.errors import UserError
from ncis_deploy.runners.base import (InactiveRunnerError, InputSpec, Runner, RunnerInputError, check_input,
                                      input_spec_from_onnx)

BACKENDS = ("torch", "onnxruntime", "tensorrt", "openvino")  # what an artifact is deployed on
REFERENCE = "reference"  # onnx's reference evaluator: checks a graph (even a plugin one), too slow to deploy
ALIASES = {"pytorch": "torch", "ort": "onnxruntime", "trt": "tensorrt", "ov": "openvino"}
# what a precision may be called on any command line; precision_name() gives its one spelling
PRECISION_ALIASES = {"fp32": "f32", "float32": "f32", "float": "f32", "bfloat16": "bf16", "i8": "int8", "qdq": "int8"}


def precision_name(text: str) -> str:
    """``f32``, ``bf16`` or ``int8`` for any of their spellings; other names (``auto``, typos) pass through
    lower-cased, for the caller to accept or reject with its own list."""
    p = str(text).lower()
    return PRECISION_ALIASES.get(p, p)

# backend -> (module, class); the module is imported only when that backend is asked for
_CLASSES = {
    "torch": ("ncis_deploy.runners.torch", "TorchRunner"),
    "onnxruntime": ("ncis_deploy.runners.onnxruntime", "OnnxRuntimeRunner"),
    "tensorrt": ("ncis_deploy.runners.tensorrt", "TensorRTRunner"),
    "openvino": ("ncis_deploy.runners.openvino", "OpenVINORunner"),
    REFERENCE: ("ncis_deploy.runners.reference", "ReferenceRunner"),
}


def make_runner(backend: str, artifact=None, *, device: str = "cpu", providers=None, **kw) -> Runner:
    """Build an (inactive) runner.

    ``artifact`` is a purifier preset / directory / config for ``torch`` (None = the ``ncis`` preset), an ``.onnx``
    file (or its bytes) for ``onnxruntime``, ``openvino`` and ``reference``, a serialized engine for ``tensorrt``.
    ``device`` picks cpu/cuda for torch and, when ``providers`` is not given, the onnxruntime provider; TensorRT
    always runs on the current CUDA device, OpenVINO and the reference evaluator on the CPU. Extra keyword arguments
    go to the runner class (openvino: ``precision``, ``threads``).
    """
    key = ALIASES.get(str(backend).lower(), str(backend).lower())
    if key not in _CLASSES:
        raise UserError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)} (or {REFERENCE!r}, "
                        "onnx's reference evaluator, to check a graph)")
    if providers is not None and key != "onnxruntime":
        raise UserError(f"providers only apply to the onnxruntime backend, not {key}")
    if key != "torch" and artifact is None:
        what = "a serialized TensorRT engine" if key == "tensorrt" else "an .onnx file"
        raise UserError(f"the {key} backend needs {what} to run; export one first")
    if key in (REFERENCE, "openvino") and str(device).lower() != "cpu":
        raise UserError(f"the {key} backend runs on the CPU only, not {device}")
    module, cls_name = _CLASSES[key]
    cls = getattr(importlib.import_module(module), cls_name)
    if key == "torch":
        return cls(artifact, device=device, **kw)
    if key == "onnxruntime":
        if providers is None:
            providers = "cuda" if str(device).startswith("cuda") else "cpu"
        if str(device).startswith("cuda:"):
            kw.setdefault("device_id", _device_index(device))
        return cls(artifact, providers=providers, **kw)
    return cls(artifact, **kw)


def _device_index(device: str) -> int:
    try:
        return int(str(device).split(":", 1)[1])
    except ValueError:
        raise UserError(f"device {device!r} is not 'cpu', 'cuda' or 'cuda:N'") from None


__all__ = ["ALIASES", "BACKENDS", "REFERENCE", "InactiveRunnerError", "InputSpec", "Runner", "RunnerInputError",
           "check_input", "input_spec_from_onnx", "make_runner"]
