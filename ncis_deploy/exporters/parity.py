"""Does the exported ONNX compute what PyTorch computes? Measured at export time, through the runners.

Cases: seeded random images and the bundled hold-out photos (centre crops), at batch 1 and a larger batch, plus two
other sizes (odd ones among them) for a dynamic-H/W export. Each case records max and mean absolute error
(:func:`ncis_deploy.runners.compare.compare`, PyTorch as the reference, ONNX Runtime CPU as the candidate); the
export fails when a float32 case exceeds ``FP32_TOLERANCE``. Where a classifier is merged in, top-1 agreement of
the one-graph model with classifier(PyTorch purifier) is recorded too. A plugin graph, which ONNX Runtime cannot
run, is checked on the reference runner (:func:`reference_parity`); the live-tap BSN against a dense export of the
same masked convolutions (:func:`bsn_tap_report`).
"""

from __future__ import annotations

import numpy as np

from ncis_deploy.data import bundled_photos
from ncis_deploy.errors import UserError
from ncis_deploy.exporters import onnx as onnx_export
from ncis_deploy.exporters.plugin_ref import PLUGIN_NAME
from ncis_deploy.runners import Runner, make_runner
from ncis_deploy.runners.compare import PairResult, compare

FP32_TOLERANCE = 1e-4


class ParityError(UserError):
    """An exported artifact does not compute what PyTorch computes."""


def _photo_batch(n: int, h: int, w: int) -> np.ndarray:
    photos = [a for _, a in bundled_photos("holdout")]
    out = []
    for i in range(n):
        a = photos[i % len(photos)]
        ph, pw = a.shape[:2]
        if ph < h or pw < w:  # small photos are tiled by reflection; parity only needs realistic content
            a = np.pad(a, ((0, max(0, h - ph)), (0, max(0, w - pw)), (0, 0)), mode="reflect")
            ph, pw = a.shape[:2]
        y, x = (ph - h) // 2, (pw - w) // 2
        out.append(a[y : y + h, x : x + w].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def parity_inputs(height: int, width: int, dynamic_hw: bool, large_batch: int = 4, seed: int = 0):
    """(name, NCHW float32 array) cases."""
    rng = np.random.default_rng(seed)
    sizes = [(height, width)] + ([(97, 131), (33, 50)] if dynamic_hw else [])
    cases = []
    for h, w in sizes:
        for n in (1, large_batch):
            cases.append((f"random {n}x3x{h}x{w}", rng.random((n, 3, h, w), dtype=np.float32)))
        cases.append((f"photos {2}x3x{h}x{w}", _photo_batch(2, h, w)))
    return cases


def _refuse(pair: PairResult, what: str) -> None:
    """Raise ParityError for the first case of ``pair`` past its tolerance."""
    if pair.failures:
        c = pair.failures[0]
        raise ParityError(f"{what} by {c.max_abs:.3g} (> {pair.tolerance.max_abs:g}) on {c.case}; the export was not "
                          "written. This is a bug: please report it")


def _onnxruntime_vs_pytorch(purifier, model_bytes: bytes, cases, tolerance: float | None, label: str):
    runners = {"pytorch": make_runner("torch", purifier), "onnxruntime": make_runner("onnxruntime", model_bytes)}
    result = compare(runners, cases, tolerance)
    _refuse(result.pairs[0], f"{label} on ONNX Runtime differs from PyTorch")
    return result


def check_parity(purifier, model_bytes: bytes, cases, tolerance: float | None = FP32_TOLERANCE, label: str = "ONNX"):
    """Run every case through PyTorch and ONNX Runtime CPU; raise ParityError past ``tolerance`` (None: record only)."""
    pair = _onnxruntime_vs_pytorch(purifier, model_bytes, cases, tolerance, label).pairs[0]
    return {"backend": "onnxruntime-cpu", "reference": "pytorch-cpu-fp32", "tolerance": tolerance,
            "max_abs": pair.max_abs, "cases": pair.rows()}


class _ClassifierOnPurifier(Runner):
    """What a merged export should compute: the PyTorch purifier, ``(x - mean) / std``, the classifier on ORT."""

    name = "classifier(pytorch purifier)"

    def __init__(self, purifier, classifier_bytes: bytes, mean, std):
        super().__init__()
        self.purifier = make_runner("torch", purifier)
        self.classifier = make_runner("onnxruntime", classifier_bytes, check_range=False)  # normalised input
        self.mean = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(1, -1, 1, 1)

    def activate_impl(self) -> None:
        self.purifier.activate()
        self.classifier.activate()
        self.input_spec = self.purifier.input_spec

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self.classifier.infer(((self.purifier.infer(x) - self.mean) / self.std).astype(np.float32))

    def deactivate_impl(self) -> None:
        self.classifier.deactivate()
        self.purifier.deactivate()


def classifier_agreement(purifier, classifier_bytes: bytes, merged_bytes: bytes, cases, mean, std) -> dict:
    """Top-1 of the merged graph vs the classifier run on the PyTorch purifier's output (same normalisation)."""
    pair = compare([_ClassifierOnPurifier(purifier, classifier_bytes, mean, std),
                    make_runner("onnxruntime", merged_bytes)], cases, top1=True).pairs[0]
    return {"top1_agreement": pair.top1_agreement, "images": pair.images, "max_abs_logit_diff": pair.max_abs}


# ------------------------------------------------------------------------------------------------ plugin graphs
# The reference evaluator runs convolutions in NumPy: about 1.2 s for one 64x64 image through the shipped BSN, 15 s
# at 224x224, and ~20x slower in float16. Plugin graphs are therefore checked on crops of at most these sides. That
# checks the artifact itself, not a re-export: no node of a plugin graph depends on the spatial size (the plugin
# reflects at whatever H, W it gets; the BSN is convolutions), so the graph computes the same function at every size.
REFERENCE_MAX_SIDE = 64
REFERENCE_MAX_SIDE_FP16 = 24


def reference_parity(purifier, model, height: int, width: int, *, dynamic_hw: bool, large_batch: int,
                     tolerance: float | None = 1e-5, fp16: bool = False) -> dict:
    """Run a plugin graph on the reference runner and compare it with what ONNX Runtime computes.

    float32: against the standard (matmul) export of the same purifier on ONNX Runtime CPU at each checked size,
    failing beyond ``tolerance``; that standard export is itself checked against PyTorch on the same inputs
    (``standard_vs_pytorch_max_abs``), so the plugin graph is tied to PyTorch too. ``fp16``: one small random image
    against PyTorch in float32, recorded only (as for the standard FP16 export).
    """
    side = REFERENCE_MAX_SIDE_FP16 if fp16 else REFERENCE_MAX_SIDE
    sizes = [(min(height, side), min(width, side))] + ([(33, 50)] if dynamic_hw and not fp16 else [])
    rows, standard_max = [], 0.0
    with make_runner("reference", model) as plugin_graph:
        for h, w in sizes:
            cases = parity_inputs(h, w, False, large_batch)
            if fp16:
                cases = cases[:1]
                reference = make_runner("torch", purifier)
            else:
                standard = _onnxruntime_vs_pytorch(purifier, onnx_export.build_onnx(purifier, h, w).SerializeToString(),
                                                   cases, FP32_TOLERANCE, "standard ONNX")
                standard_max = max(standard_max, standard.pairs[0].max_abs)
                reference = standard.outputs["onnxruntime"]  # recorded: no second run of the standard graph
            pair = compare({"reference": reference, "plugin": plugin_graph}, cases, tolerance).pairs[0]
            _refuse(pair, f"the plugin ONNX ({PLUGIN_NAME} on the reference evaluator) differs from the standard "
                          "export")
            rows += pair.rows()
    result = {"backend": f"onnx-reference-evaluator ({PLUGIN_NAME} in NumPy)",
              "reference": "pytorch-cpu-fp32" if fp16 else "standard (matmul) ONNX on onnxruntime-cpu",
              "tolerance": tolerance, "max_abs": max(r["max_abs"] for r in rows), "cases": rows,
              "checked_at": [list(s) for s in sizes]}
    if not fp16:
        result["standard_vs_pytorch_max_abs"] = standard_max
    return result


# -------------------------------------------------------------------------------------------- live-tap BSN check
def bsn_tap_report(purifier, height: int, width: int) -> dict:
    """MACs of the live-tap BSN export vs a dense export of the same masked convs, and their output difference."""
    if purifier.bsn is None:
        return {"applicable": False}
    from ncis_deploy.model.purifier import Purifier

    bsn_only = Purifier({"stages": [{"type": "bsn", "iterations": 1}], "bsn": purifier.config["bsn"], "clamp": False})
    bsn_only.bsn.load_state_dict(purifier.bsn.state_dict())
    bsn_only.eval()
    live = onnx_export.build_onnx(bsn_only, height, width)
    dense = onnx_export.build_onnx(bsn_only, height, width, dense_bsn=True)
    shape = (1, 3, height, width)
    m_live, m_dense = onnx_export.count_macs(live, shape)["total"], onnx_export.count_macs(dense, shape)["total"]
    x = np.random.default_rng(1).random((1, 3, min(height, 64), min(width, 64)), dtype=np.float32)

    def small(dense_bsn: bool):
        return make_runner("onnxruntime", onnx_export.build_onnx(bsn_only, x.shape[2], x.shape[3],
                                                                 dense_bsn=dense_bsn).SerializeToString())

    diff = compare({"live taps": small(False), "dense": small(True)}, [("random", x)]).pairs[0].max_abs
    return {"applicable": True, "input_shape": list(shape), "macs_live_taps": m_live, "macs_dense": m_dense,
            "ratio": m_live / m_dense, "max_abs_diff_live_vs_dense": diff, "diff_checked_at": list(x.shape)}
