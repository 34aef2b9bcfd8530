"""Does the exported ONNX compute what PyTorch computes? Measured on ONNX Runtime CPU at export time.

Cases: seeded random images and the bundled hold-out photos (centre crops), at batch 1 and a larger batch, plus two
other sizes (odd ones among them) for a dynamic-H/W export. Each case records max and mean absolute error; the
export fails when a float32 case exceeds ``FP32_TOLERANCE``. Where a classifier is merged in, top-1 agreement of
the one-graph model with classifier(PyTorch purifier) is recorded too.
"""

from __future__ import annotations

import numpy as np
import torch

from ncis_deploy.data import bundled_photos
from ncis_deploy.errors import UserError

FP32_TOLERANCE = 1e-4


class ParityError(UserError):
    """An exported artifact does not compute what PyTorch computes."""


def ort_session(model_bytes: bytes, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


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


@torch.no_grad()
def check_parity(purifier, model_bytes: bytes, cases, tolerance: float | None = FP32_TOLERANCE, label: str = "ONNX"):
    """Run every case through PyTorch and ONNX Runtime CPU; raise ParityError past ``tolerance`` (None: record only)."""
    sess = ort_session(model_bytes)
    rows = []
    for name, x in cases:
        ref = purifier(torch.from_numpy(x)).numpy()
        got = sess.run(None, {"input": x})[0]
        err = np.abs(got.astype(np.float64) - ref)
        rows.append({"case": name, "max_abs": float(err.max()), "mean_abs": float(err.mean())})
        if tolerance is not None and not err.max() <= tolerance:
            raise ParityError(f"{label} on ONNX Runtime differs from PyTorch by {err.max():.3g} (> {tolerance:g}) on "
                              f"{name}; the export was not written. This is a bug: please report it")
    return {"backend": "onnxruntime-cpu", "reference": "pytorch-cpu-fp32", "tolerance": tolerance,
            "max_abs": max(r["max_abs"] for r in rows), "cases": rows}


@torch.no_grad()
def classifier_agreement(purifier, classifier_bytes: bytes, merged_bytes: bytes, cases, mean, std) -> dict:
    """Top-1 of the merged graph vs the classifier run on the PyTorch purifier's output (same normalisation)."""
    cls, merged = ort_session(classifier_bytes), ort_session(merged_bytes)
    cls_in = cls.get_inputs()[0].name
    agree = total = 0
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    max_logit = 0.0
    for _, x in cases:
        ref = cls.run(None, {cls_in: ((purifier(torch.from_numpy(x)).numpy() - m) / s).astype(np.float32)})[0]
        got = merged.run(None, {"input": x})[0]
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        total += len(x)
        max_logit = max(max_logit, float(np.abs(ref - got).max()))
    return {"top1_agreement": agree / total, "images": total, "max_abs_logit_diff": max_logit}
