"""``export --int8``: the purifier with explicit QuantizeLinear/DequantizeLinear, calibrated on photos.

The form: int8 with zero point 0 everywhere, weights symmetric per output channel (7 bits or 8, ``WEIGHT_BITS``),
activations symmetric per tensor (scale = the largest |value| seen in calibration / 127), as explicit Q/DQ pairs.
That is the one INT8 form TensorRT 10.1+/11 accepts (no int32 or uint8 Q/DQ, no zero points), the one OpenVINO turns
into FakeQuantize, and the one ONNX Runtime's CPU EP fuses into QLinear* kernels once re-encoded losslessly in uint8
(:func:`ncis_deploy.runners.onnxruntime.cpu_qdq_form`, applied by every ORT CPU session the package opens).

Three placements (``INT8_FORMS``, ``export --int8-form``), the same convolutions in int8 in each: "accurate", the
default, Q/DQ only on the convolutions' inputs (the placement TensorRT's documentation recommends), PRelu, adds and
scalings in float; "fast", described below; "openvino", accurate's plus both inputs of every add in the BSN.
Every quantized tensor rounds: "accurate" rounds the three a layer's convolutions read, "fast" about five per layer,
69.4 vs 60.8 dB against FP32 on the hold-out photos, and only "accurate" keeps the classifier's top-1 on the eval's
near-tie images as FP32 does (1 of 440 moved, against 13 for "fast" and 34 for saving the FP32 output as a PNG:
docs/eval.md), which is why it is the default. ONNX Runtime runs "accurate" slower than FP32 (float ops between
every pair of int8 convs); "fast" is its fast int8. OpenVINO fuses an add whose inputs are both quantized into the
int8 convolution that makes one of them, so "openvino" (61.3 dB) is its fastest int8; quantizing only some adds'
inputs (those read from a convolution: 62.1 dB, or all but the running sum of the residual blocks: 61.9 dB,
measured before the head block went float) lost all of that speed.

What runs in int8 in form "fast" (from the fourth masked layer to the head block), and why (a plain
``quantize_static`` of the FP32 graph is *slower* than FP32 on ORT: the float PRelu between quantized convs costs a
dequantize, a PRelu and a quantize pass, 70 times):

* BSN convolutions: int8 in and out; biases stay float (TensorRT dequantizes no int32; ORT quantizes a float bias
  itself). Structurally zero taps quantize to exactly 0 (symmetric, zero point 0).
* PRelu(y) = y + (a − 1)·min(y, 0), three int8 kernels: min(y, 0) is a LeakyRelu with α = 256 quantized at 256× the
  input's scale, so its positive side rounds to 0 and its integers are exactly y's negative ones (no new rounding);
  (a − 1)·min(y, 0) is a depthwise 1×1 conv, whose per-channel weight scale holds every slope exactly; the sum is an
  Add. Every runtime fuses the three (ORT: QLinearLeakyRelu, QLinearConv, QLinearAdd).
* Adds, and the scalar Muls (× 0.5, × 1/L) whose output scale is the input's times the factor: they change no
  integer, so ORT's re-encoding drops them.

What stays float, and why:

* The first ``FLOAT_MASKED_LAYERS`` (3) masked layers of each BSN pass: the raw chain is a plain 17-layer stack, and
  rounding injected at its start is amplified by every layer after it. Measured on the purifier shipped before the
  bilateral baseline (mean4, at 224², hold-out photos): everything int8 gives 38.5 dB PSNR vs FP32, the same with per-channel or asymmetric
  activations (39-39.5 dB), 45 dB with the first two layers float and 52 dB with three, for 13 % of the MACs.
* The head block of each pass (the residual block after the mean of the out chain, and the head conv): nothing
  after it smooths its rounding. Quantizing one conv at a time (shipped ``ncis``, form accurate, 8-bit weights,
  hold-out photos), the head conv and the two convs before it made 50 % of the summed squared error for 1.7 % of
  the MACs; keeping them float took accurate from 64.0 to 69.4 dB (8-bit weights: 66.6 → 69.7) and its top-1 moves
  on the eval's 88 crops from 6-7 to 1 of 440, for 0-5 % of OpenVINO's int8 speed. More float masked layers did not
  help (4-9 layers: 66.1-66.6 dB at 8 bits).
* GS (two fixed MatMuls, ≈ 1 % of the MACs, with smoothing weights int8 cannot hold), the blind baseline (mean4 or
  the bilateral: exact), and what follows the head (the image is put back together in float: head correction +
  baseline, clipped).

The blind spot holds exactly: every int8 op is per pixel or reads only the taps the float graph reads
(:func:`blind_spot_report` checks it on the artifact's own BSN).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ncis_deploy.errors import UserError
from ncis_deploy.exporters.gate import graph_index
from ncis_deploy.quality import LOW_PRECISION_PSNR_DB

INT8_MAX = 127
# Weights use 7 bits ([-63, 63]) by default: x86 u8 x s8 kernels without VNNI/AMX (vpmaddubsw) add two products in
# int16, which 255·127·2 overflows and 255·63·2 does not, so a 7-bit artifact computes the same on every CPU. 8 bits
# ([-127, 127], ``export --int8-weight-bits 8``) are for TensorRT and for CPUs with VNNI/AMX (the CPU runners
# refuse them elsewhere: :func:`ncis_deploy.cpu.check_int8_weights`). Shipped ``ncis`` at 224², hold-out photos, vs
# FP32: accurate 69.4 → 69.7 dB (64.0 → 66.6 before the head block went float: most of what 8 bits fixed was there),
# openvino 60.3 → 60.7, fast 58.9 → 59.7 (those two measured with the head block int8; activation rounding dominates
# them; on the mean4-baseline purifier 8 bits measured 51.8 dB against 7 bits' 51.9).
WEIGHT_BITS = (7, 8)
DEFAULT_WEIGHT_BITS = 7
WEIGHT_BITS_KEY = "ncis_deploy.int8_weight_bits"  # the artifact's metadata; artifacts from before it have 7
NEG_GAIN = 256.0  # α of the LeakyRelu that computes min(y, 0): > 2·127, so y's positive side rounds to 0
CALIBRATION_MAX_IMAGES = 16  # a folder's images are spread over this many; the bundled set has 9
PSNR_TARGET_DB = LOW_PRECISION_PSNR_DB

FLOAT_MASKED_LAYERS = 3  # the BSN's first masked layers run in float: see the module docstring

# Where Q/DQ goes (``export --int8-form``). Measured on the shipped purifier, ``ncis`` at 224², batch 1, × ORT FP32,
# on a Zen 5 EPYC with avx512_bf16/vnni (benchmarks/results/int8-cpu-avx512-zen5.json): "accurate" 69.4 dB, ORT
# 0.64x, OpenVINO 2.79x; "fast" 60.8 dB, ORT 1.36x, OpenVINO 2.57x; "openvino" 61.3 dB, ORT 0.59x, OpenVINO 3.15x;
# OpenVINO f32 2.28x and its bf16 hint 3.55x (63.6 dB) in the same run. On an AVX2-only EPYC (int8-cpu-avx2.json,
# before the head block went float) OpenVINO f32 was 1.85x and only "openvino" beat it (2.27x). docs/export.md has
# the rest.
INT8_FORMS = {
    "accurate": "Q/DQ only on the inputs of the int8 convolutions (TensorRT's recommended placement); PRelu, the "
                "adds and scalings stay float, so only what a convolution reads is rounded; the only form whose "
                "top-1 agreement with FP32 meets the 99 % guard; slower than FP32 on ONNX Runtime",
    "fast": "every BSN tensor from the fourth masked layer to the head block is int8, PRelu split into int8 kernels, "
            "so the CPU runtimes fuse the whole chain: ONNX Runtime's fast int8; about the error of rounding the "
            "output to 8 bits",
    "openvino": "accurate's placement plus both inputs of every add in the BSN (the placement NNCF picks for "
                "OpenVINO): OpenVINO fuses each add into an int8 convolution, the fastest int8 on OpenVINO; about "
                "fast's error; slow on ONNX Runtime",
}
DEFAULT_INT8_FORM = "accurate"
# the form each CPU runtime runs fastest (measured on both EPYCs of docs/export.md); bench notes a mismatch
FASTEST_FORM = {"onnxruntime": "fast", "openvino": "openvino"}

# Name hints of the FP32 builder (exporters/onnx.py): which convs are the baseline, the head block, and the masked
# layers (a layer starts at its first conv: bsn_conv for layer 1, bsn_centre for the others). The head block (its
# residual block's convs, then the head conv) is named "bsn_head..."; the head conv is the one not "bsn_head_res".
_BASELINE_PREFIXES, _HEAD_PREFIX, _HEAD_RES_PREFIX = ("mean4", "bilateral"), "bsn_head", "bsn_head_res"
_MASKED_PREFIXES = ("bsn_conv", "bsn_centre", "bsn_knight", "bsn_corners")
_LAYER_START_PREFIXES = ("bsn_conv", "bsn_centre")
_ELEMENTWISE = ("Add", "Mul", "LeakyRelu", "PRelu")
NEG_SUFFIX, NEG_SCALED_SUFFIX = "@neg", "@negscaled"  # the tensors split_prelu adds after a PRelu output's name


# --------------------------------------------------------------------------------------------------- calibration
@dataclass
class Calibration:
    """Calibration inputs (NCHW float32 batches in [0, 1]) and where they came from."""

    batches: list[np.ndarray]
    source: str
    images: int

    def record(self) -> dict:
        return {"source": self.source, "images": self.images, "inputs": sum(len(b) for b in self.batches),
                "views": "each image whole (resized to cover the export size), and a native-resolution crop of it "
                         "with 8/255 Gaussian noise",
                "ranges": "max |x| per tensor, symmetric int8 (scale = max / 127)"}


def _crop_to(img: np.ndarray, h: int, w: int, rng: np.random.Generator | None) -> np.ndarray:
    """[H, W, 3] → [3, h, w]: a crop (random with ``rng``, else centred), reflect-padded first where too small."""
    ih, iw = img.shape[:2]
    if ih < h or iw < w:
        mode = "reflect" if min(ih, iw) > 1 else "edge"
        while img.shape[0] < h or img.shape[1] < w:  # reflection adds at most the image's own size per round
            ph, pw = min(h - img.shape[0], img.shape[0] - 1), min(w - img.shape[1], img.shape[1] - 1)
            img = np.pad(img, ((0, max(0, ph) if mode == "reflect" else h - img.shape[0]),
                               (0, max(0, pw) if mode == "reflect" else w - img.shape[1]), (0, 0)), mode=mode)
        ih, iw = img.shape[:2]
    y, x = ((int(rng.integers(0, ih - h + 1)), int(rng.integers(0, iw - w + 1))) if rng is not None
            else ((ih - h) // 2, (iw - w) // 2))
    return np.ascontiguousarray(img[y: y + h, x: x + w].transpose(2, 0, 1), dtype=np.float32)


def _cover(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """[H, W, 3] → [3, h, w]: the whole image resized (antialiased) to cover h×w, centre-cropped."""
    import torch
    import torch.nn.functional as F

    ih, iw = img.shape[:2]
    k = max(h / ih, w / iw)
    size = (max(h, round(ih * k)), max(w, round(iw * k)))
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    t = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return _crop_to(t[0].permute(1, 2, 0).numpy(), h, w, None)


def photo_views(images: list[np.ndarray], height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """[2·len(images), 3, h, w]: each image whole (resized to cover) and as a native-resolution random crop, the way
    a classifier's input and a crop of a large photo look to the purifier."""
    rng = np.random.default_rng(seed)
    return np.stack([v for im in images for v in (_cover(im, height, width), _crop_to(im, height, width, rng))])


def calibration_set(folder: str | os.PathLike | None, height: int, width: int, *, batch: int = 4,
                    seed: int = 0) -> Calibration:
    """:func:`photo_views` of the bundled training photos (``folder`` None) or of the images in ``folder`` (at most
    ``CALIBRATION_MAX_IMAGES``, evenly spread), the crops with the hold-out noise added: what the purifier sees is a
    photo plus a small perturbation.

    The hold-out photos (``data.BUNDLED_HOLDOUT``) are never used: they measure the quantized artifact's quality.
    A folder that does not exist, holds no image or no readable image is a one-line UserError.
    """
    import torch

    from ncis_deploy.data import IMAGE_EXTENSIONS, bundled_photos, load_image
    from ncis_deploy.quality import HOLDOUT_NOISE, add_noise

    if folder is None:
        images = [a for _, a in bundled_photos("train")]
        source = "bundled training photos (scikit-image)"
    else:
        root = Path(folder)
        fix = "pass a folder of photos like the ones you will purify, or leave --calibration out for the bundled ones"
        if not root.is_dir():
            raise UserError(f"--calibration {root} {'is not a directory' if root.exists() else 'does not exist'}; "
                            f"{fix}")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise UserError(f"--calibration {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}); {fix}")
        # spread out (a sorted folder is often grouped by class), the rest in reserve for files that do not decode
        spread = list(dict.fromkeys(np.linspace(0, len(files) - 1, min(len(files), CALIBRATION_MAX_IMAGES))
                                    .round().astype(int).tolist()))
        images, bad = [], []
        for i in spread + [i for i in range(len(files)) if i not in set(spread)]:
            if len(images) == CALIBRATION_MAX_IMAGES:
                break
            try:
                images.append(load_image(files[i]))
            except UserError as e:
                bad.append(str(e))
        if not images:
            raise UserError(f"--calibration {root}: none of its {len(files)} image files can be decoded "
                            f"(first: {bad[0]}); {fix}")
        source = str(root)
    inputs = photo_views(images, height, width, seed=seed)
    inputs[1::2] = add_noise(torch.from_numpy(inputs[1::2]), HOLDOUT_NOISE, seed).numpy()
    return Calibration([inputs[i: i + batch] for i in range(0, len(inputs), batch)], source, len(images))


# ------------------------------------------------------------------------------------------------ float rewrite
def _inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def split_prelu(model: onnx.ModelProto, only: set[str] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` with each PRelu(y, a) named in ``only`` (all when None) replaced by
    Add(y, DWConv(LeakyRelu(y, α=256), (a − 1)/256)).

    This is PRelu only once quantized with the scales :func:`insert_qdq` forces (the LeakyRelu's positive side
    rounds to 0 there); in float it leaks (a − 1)·y/256 for y > 0, which is why ranges are measured on the FP32
    graph and why a PRelu that stays float is not split. The PRelu's output name is kept.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = _inits(m)
    nodes = []
    for n in m.graph.node:
        if n.op_type != "PRelu" or (only is not None and n.name not in only):
            nodes.append(n)
            continue
        slope = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64).reshape(-1)
        w = numpy_helper.from_array(((slope - 1.0) / NEG_GAIN).astype(np.float32).reshape(-1, 1, 1, 1),
                                    f"{n.name}_negw")
        m.graph.initializer.append(w)
        neg, scaled = f"{n.output[0]}{NEG_SUFFIX}", f"{n.output[0]}{NEG_SCALED_SUFFIX}"
        nodes += [helper.make_node("LeakyRelu", [n.input[0]], [neg], name=neg, alpha=NEG_GAIN),
                  helper.make_node("Conv", [neg, w.name], [scaled], name=scaled, group=len(slope),
                                   kernel_shape=[1, 1], pads=[0, 0, 0, 0], strides=[1, 1], dilations=[1, 1]),
                  helper.make_node("Add", [n.input[0], scaled], list(n.output), name=f"{n.name}_sum")]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    keep = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    return m


# ------------------------------------------------------------------------------------------------------- ranges
_RANGED_OPS = ("Conv", "Add", "Mul", "PRelu", "MatMul", "Pad", "Clip")
# Ranges are the max, not a clip of it. Tried (shipped ``ncis``, 224², form accurate): per tensor, the clip c·max
# (c in 0.9-1) with the least mean squared rounding + clipping error on strided samples of the calibration
# activations. Hold-out 64.0 → 64.7 dB, but on the eval's 88 crops max |error| 0.0037 → 0.0056 and top-1 flips vs
# FP32 6 → 9-10 of 440 (22 images: 2 → 1 of 198); deeper clips (c down to 0.2, 65.4 dB) saturated colours the
# calibration photos never reach (5/255 errors on one photo). Form fast gained nothing reliable (58.2-60.9 dB vs 58.9).


def ranges(fp32: onnx.ModelProto, batches: list[np.ndarray]) -> dict[str, float]:
    """max |x| of every float activation of the FP32 graph over ``batches``, plus ``NAME@negslope``: the largest
    |(a − 1)·min(y, 0)| of each PRelu (what its split form's depthwise conv outputs).

    The reductions run inside the graph (ReduceMax and ReduceMin per tensor, per channel for PRelu inputs), so
    scalars come back instead of gigabytes of activations, at about the cost of a plain run.
    """
    import onnxruntime

    from ncis_deploy.runners.onnxruntime import open_session

    m = onnx.ModelProto()
    m.CopyFrom(fp32)
    g = m.graph
    inits = _inits(m)
    inferred = onnx.shape_inference.infer_shapes(fp32).graph.value_info
    floats = {v.name for v in inferred if v.type.tensor_type.elem_type == TensorProto.FLOAT}  # not index maths
    outs, prelus, nodes = [], [], []
    g.initializer.append(numpy_helper.from_array(np.array([0, 2, 3], np.int64), "@axes_nhw"))
    for n in g.node:
        nodes.append(n)
        if n.op_type not in _RANGED_OPS or n.output[0] not in floats:
            continue
        t = n.output[0]
        nodes += [helper.make_node("ReduceMax", [t], [f"{t}@max"], keepdims=0),
                  helper.make_node("ReduceMin", [t], [f"{t}@min"], keepdims=0)]
        outs += [f"{t}@max", f"{t}@min"]
        if n.op_type == "PRelu":
            nodes.append(helper.make_node("ReduceMin", [n.input[0], "@axes_nhw"], [f"{t}@cmin"], keepdims=0))
            outs.append(f"{t}@cmin")
            prelus.append((t, numpy_helper.to_array(inits[n.input[1]]).astype(np.float64).reshape(-1)))
    del g.node[:]
    g.node.extend(nodes)
    del g.output[:]
    g.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs)
    # priority-based order runs each reduction as soon as its tensor exists; the default order ran them last and
    # kept every activation alive (3.4 GB for one 224² image instead of 0.4 GB, and several times slower)
    session = open_session(m.SerializeToString(), "cpu", options={
        "graph_optimization_level": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "execution_order": onnxruntime.ExecutionOrder.PRIORITY_BASED})
    found: dict[str, np.ndarray] = {}
    for x in batches:
        for name, v in zip(outs, session.run(outs, {fp32.graph.input[0].name: x})):
            v = np.asarray(v, np.float64)
            found[name] = v if name not in found else (np.maximum if name.endswith("@max") else np.minimum)(
                found[name], v)
    amax = {o[: -len("@max")]: max(float(v), -float(found[o[: -len("@max")] + "@min"]))
            for o, v in found.items() if o.endswith("@max")}
    for t, slope in prelus:
        amax[f"{t}@negslope"] = float(np.max(np.abs(slope - 1.0) * np.maximum(0.0, -found[f"{t}@cmin"])))
    amax[fp32.graph.input[0].name] = 1.0  # the contract: inputs in [0, 1]
    return amax


# -------------------------------------------------------------------------------------------------------- Q/DQ
def weight_max(bits: int) -> int:
    """The largest |integer| of a ``bits``-bit symmetric weight (63 or 127)."""
    if bits not in WEIGHT_BITS:
        raise UserError(f"--int8-weight-bits must be one of {', '.join(map(str, WEIGHT_BITS))}, got {bits!r}")
    return 2 ** (bits - 1) - 1


def quantize_weight(w: np.ndarray, bits: int = DEFAULT_WEIGHT_BITS) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel (axis 0), in [-m, m] for m = :func:`weight_max` (bits): (int8 weights,
    float32 scales). A zero weight is exactly 0 and an all-zero channel gets scale 1."""
    top = weight_max(bits)
    w = np.asarray(w, np.float64)
    amax = np.abs(w).reshape(len(w), -1).max(axis=1)
    scale = np.where(amax > 0, amax / top, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale.astype(np.float64).reshape(-1, *[1] * (w.ndim - 1))), -top, top)
    return q.astype(np.int8), scale


def _scalar_constant(t: onnx.TensorProto | None) -> float | None:
    if t is None:
        return None
    v = numpy_helper.to_array(t)
    return float(v.reshape(-1)[0]) if v.size == 1 else None


def float_convs(model: onnx.ModelProto, float_layers: int = FLOAT_MASKED_LAYERS) -> set[str]:
    """Names of the convs that stay float: the blind baselines (mean4, bilateral), each BSN pass's head block, and
    the masked convs of each pass's first ``float_layers`` layers."""
    out, layer = set(), -1
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        if n.name.startswith(_MASKED_PREFIXES[0]):
            layer = -1  # a new BSN pass
        if n.name.startswith(_LAYER_START_PREFIXES):
            layer += 1
        if n.name.startswith(_BASELINE_PREFIXES + (_HEAD_PREFIX,)) or (
                n.name.startswith(_MASKED_PREFIXES) and layer < float_layers):
            out.add(n.name)
    return out


def float_nodes(model: onnx.ModelProto, float_layers: int = FLOAT_MASKED_LAYERS) -> set[str]:
    """Names of the nodes another quantizer (NNCF, in benchmarks/int8_cpu.py) must leave float to keep what
    ``export --int8`` keeps float: :func:`float_convs`, and everything outside a BSN pass's body — GS before it, and
    from its head block on (head block, baseline, reassembly, clip), where the image is put back together."""
    body = bsn_body(model)
    return set(float_convs(model, float_layers)) | {n.name for n in model.graph.node if n.name not in body}


def bsn_body(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes of each BSN pass's body: from its first masked conv up to, not including, its head block."""
    body, inside = set(), False
    for n in model.graph.node:
        inside = (inside or n.name.startswith(_MASKED_PREFIXES[0])) and not n.name.startswith(_HEAD_PREFIX)
        if inside:
            body.add(n.name)
    return body


def int8_plan(model: onnx.ModelProto, float_conv_names: set[str],
              form: str = DEFAULT_INT8_FORM) -> tuple[set[str], set[str]]:
    """(names of the nodes that run in int8, names of the tensors that are quantized).

    A conv runs in int8 unless named in ``float_conv_names``. Form "fast": an elementwise op (Add, Mul, PRelu,
    LeakyRelu) of a BSN pass's body (:func:`bsn_body`) runs in int8 when one of its inputs comes out of an int8 op
    (a float input is quantized on the way in), so float stays confined to the float convs, what only they feed and
    the head block. Form "accurate": only the int8 convs' activation inputs are quantized, every conv output is float.
    Form "openvino": accurate's, plus both activation inputs of every Add of a BSN pass's body (the Add runs on
    the dequantized values; OpenVINO folds it into the int8 convolution that makes one of them).
    """
    if form not in INT8_FORMS:
        raise ValueError(f"unknown INT8 form {form!r}; one of {', '.join(INT8_FORMS)}")
    if form in ("accurate", "openvino"):
        nodes = {n.name for n in model.graph.node if n.op_type == "Conv" and n.name not in float_conv_names}
        tensors = {n.input[0] for n in model.graph.node if n.name in nodes}
        if form == "openvino":  # + both inputs of every Add of a BSN pass's body
            inits, body = _inits(model), bsn_body(model)
            for n in model.graph.node:
                if n.op_type == "Add" and n.name in body:
                    nodes.add(n.name)
                    tensors.update(i for i in n.input if i not in inits)
        return nodes, tensors
    inits, body = _inits(model), bsn_body(model)
    nodes, int8_out = set(), set()
    for n in model.graph.node:  # topological order: an op's inputs are classified before it
        if n.op_type == "Conv" and n.name not in float_conv_names:
            nodes.add(n.name)
            if not n.name.startswith(_HEAD_PREFIX):
                int8_out.add(n.output[0])
        elif n.op_type in _ELEMENTWISE and n.name in body:
            acts = [i for k, i in enumerate(n.input) if i and i not in inits and not (n.op_type == "PRelu" and k)]
            if any(i in int8_out for i in acts):
                nodes.add(n.name)
                int8_out.add(n.output[0])
    tensors = set(int8_out)
    for n in model.graph.node:
        if n.name in nodes:
            tensors.update(i for k, i in enumerate(n.input) if i and i not in inits
                           and not (n.op_type == "PRelu" and k) and not (n.op_type == "Conv" and k))
    return nodes, tensors


def _tensor_scales(model: onnx.ModelProto, tensors: set[str], amax: dict[str, float]) -> dict[str, np.float32]:
    """Per-tensor scales: calibrated max / 127, except the two forced ones that make the graph exact in int8 — the
    min(y, 0) LeakyRelu (256 × its input's: positive side rounds to 0) and a scalar Mul (input scale × factor: the
    integers do not change)."""
    inits = _inits(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    scales: dict[str, np.float32] = {}

    def calibrated(name: str) -> np.float32:
        if name.endswith(NEG_SCALED_SUFFIX):
            a = amax[name[: -len(NEG_SCALED_SUFFIX)] + "@negslope"]
        else:
            a = amax[name]
        return np.float32(a / INT8_MAX) if a > 0 else np.float32(1.0 / INT8_MAX)

    def scale(name: str) -> np.float32:
        if name in scales:
            return scales[name]
        n = producer.get(name)
        if n is not None and n.op_type == "LeakyRelu" and name.endswith(NEG_SUFFIX):
            s = np.float32(NEG_GAIN) * scale(n.input[0])
        elif n is not None and n.op_type == "Mul" and (c := _factor(n, inits)) is not None:
            act = n.input[0] if n.input[0] not in inits else n.input[1]
            s = np.float32(scale(act) * np.float32(c))
        else:
            s = calibrated(name)
        scales[name] = s
        return s

    for t in tensors:
        scale(t)
    return scales


def _factor(mul: onnx.NodeProto, inits) -> float | None:
    """The positive scalar constant a Mul multiplies by, else None."""
    consts = [_scalar_constant(inits.get(i)) for i in mul.input]
    c = next((v for v in consts if v is not None), None)
    return c if c is not None and c > 0 and sum(v is None for v in consts) == 1 else None


def insert_qdq(model: onnx.ModelProto, amax: dict[str, float], float_conv_names: set[str],
               form: str = DEFAULT_INT8_FORM, weight_bits: int = DEFAULT_WEIGHT_BITS) -> onnx.ModelProto:
    """Explicit Q/DQ around every int8 op of a (for form "fast": split-PRelu) graph (:func:`int8_plan`), one DQ per
    reader.

    A quantized tensor made by a float op keeps its float value for its float readers; only int8 readers see it
    through Q/DQ.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = _inits(m)
    int8_nodes, tensors = int8_plan(m, float_conv_names, form)
    made_in_int8 = {o for n in g.node if n.name in int8_nodes for o in n.output}
    scales = _tensor_scales(m, tensors, amax)
    new_inits: list[onnx.TensorProto] = [numpy_helper.from_array(np.array(0, np.int8), "zero_i8")]
    for t in sorted(tensors):
        new_inits.append(numpy_helper.from_array(np.array(scales[t], np.float32), f"{t}@scale"))
    out: list[onnx.NodeProto] = []
    n_dq = 0

    def dq(src: str, scale: str, zero: str, hint: str, axis: int | None = None) -> str:
        nonlocal n_dq
        n_dq += 1
        name = f"{hint}@dq{n_dq}"
        kw = {} if axis is None else {"axis": axis}
        out.append(helper.make_node("DequantizeLinear", [src, scale, zero], [name], name=name, **kw))
        return name

    def q(t: str) -> None:
        out.append(helper.make_node("QuantizeLinear", [t, f"{t}@scale", "zero_i8"], [f"{t}@q"], name=f"{t}@Q"))

    for inp in g.input:
        if inp.name in tensors:
            q(inp.name)
    for n in g.node:
        node = onnx.NodeProto()
        node.CopyFrom(n)
        int8 = n.name in int8_nodes
        for k, t in enumerate(n.input):
            if t in tensors and (int8 or t in made_in_int8):
                node.input[k] = dq(f"{t}@q", f"{t}@scale", "zero_i8", t)
            elif int8 and t in inits and not (n.op_type == "Conv" and k == 2):
                w = numpy_helper.to_array(inits[t])
                base = f"{n.name}@in{k}"
                if n.op_type == "Conv":  # weights: per output channel
                    wq, ws = quantize_weight(w, weight_bits)
                    new_inits += [numpy_helper.from_array(wq, f"{base}@w"), numpy_helper.from_array(ws, f"{base}@ws"),
                                  numpy_helper.from_array(np.zeros(len(ws), np.int8), f"{base}@wz")]
                    node.input[k] = dq(f"{base}@w", f"{base}@ws", f"{base}@wz", base, axis=0)
                else:  # an elementwise constant: one exact step for a scalar, else symmetric per tensor
                    c = np.asarray(w, np.float64)
                    a = float(np.abs(c).max())
                    step = np.float32(a if c.size == 1 else a / INT8_MAX) if a > 0 else np.float32(1.0)
                    cq = np.clip(np.rint(c / step), -INT8_MAX, INT8_MAX).astype(np.int8)
                    new_inits += [numpy_helper.from_array(cq, f"{base}@c"),
                                  numpy_helper.from_array(np.array(step, np.float32), f"{base}@cs")]
                    node.input[k] = dq(f"{base}@c", f"{base}@cs", "zero_i8", base)
        out.append(node)
        for t in n.output:
            if t in tensors:
                q(t)
    del g.node[:]
    g.node.extend(out)
    g.initializer.extend(new_inits)
    used = {i for n in out for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]
    return m


def quantize(fp32: onnx.ModelProto, calibration: Calibration, *, float_layers: int = FLOAT_MASKED_LAYERS,
             form: str = DEFAULT_INT8_FORM, weight_bits: int = DEFAULT_WEIGHT_BITS) -> onnx.ModelProto:
    """The INT8 graph of an FP32 purifier graph (from :func:`ncis_deploy.exporters.onnx.build_onnx`), Q/DQ placed
    as ``form`` says (:data:`INT8_FORMS`), weights in ``weight_bits`` bits (:data:`WEIGHT_BITS`)."""
    amax = ranges(fp32, calibration.batches)
    return quantize_with(fp32, amax, float_layers=float_layers, form=form, weight_bits=weight_bits)


def quantize_with(fp32: onnx.ModelProto, amax: dict[str, float], *, float_layers: int = FLOAT_MASKED_LAYERS,
                  form: str = DEFAULT_INT8_FORM, weight_bits: int = DEFAULT_WEIGHT_BITS) -> onnx.ModelProto:
    """:func:`quantize` with ranges already measured (:func:`ranges`)."""
    weight_max(weight_bits)  # a bad value fails before any work
    floats = float_convs(fp32, float_layers)
    int8_nodes, _ = int8_plan(fp32, floats, form)
    split = split_prelu(fp32, only={n.name for n in fp32.graph.node if n.op_type == "PRelu" and n.name in int8_nodes})
    m = insert_qdq(split, amax, floats, form, weight_bits)
    props = {p.key: p.value for p in m.metadata_props}
    props.update({"ncis_deploy.precision": "int8", "ncis_deploy.int8_form": form,
                  "ncis_deploy.int8_float_masked_layers": str(float_layers),
                  WEIGHT_BITS_KEY: str(weight_bits)})
    del m.metadata_props[:]
    helper.set_model_props(m, props)
    return m


def structure(model: onnx.ModelProto) -> dict:
    """What an INT8 graph holds: int8 and float convs, Q/DQ counts, and its form (for the manifest)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    int8 = [n for n in convs if n.input[1] in producer and producer[n.input[1]].op_type == "DequantizeLinear"]
    props = {p.key: p.value for p in model.metadata_props}
    form, bits = props["ncis_deploy.int8_form"], weight_bits(model)
    top = weight_max(bits)
    return {"int8_form": form, "placement": INT8_FORMS[form], "weight_bits": bits,
            "form": "explicit QuantizeLinear/DequantizeLinear, int8, zero point 0; weights symmetric per output "
                    f"channel in [-{top}, {top}], activations symmetric per tensor"
                    + ("; PRelu as y + (a-1)*min(y, 0)" if form == "fast" else ""),
            "float_masked_layers": int(props["ncis_deploy.int8_float_masked_layers"]), "int8_convs": len(int8),
            "float_convs": len(convs) - len(int8),
            **{op: sum(n.op_type == op for n in model.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}}


def weight_bits(model: onnx.ModelProto) -> int:
    """The weight width an INT8 artifact was written with (its metadata; 7 where absent: written before the key)."""
    props = {p.key: p.value for p in model.metadata_props}
    return int(props.get(WEIGHT_BITS_KEY, 7))


# ------------------------------------------------------------------------------------------------------ checks
def masked_taps_report(fp32: onnx.ModelProto, int8: onnx.ModelProto) -> dict:
    """Every conv weight of the INT8 graph is exactly 0 wherever the FP32 graph's is (the BSN's masked and dead
    taps), and its int8 weights hold the same zeros; raises on a difference (a bug)."""
    f_inits, q_inits = _inits(fp32), _inits(int8)
    producer = {o: n for n in int8.graph.node for o in n.output}
    q_convs = {n.name: n for n in int8.graph.node if n.op_type == "Conv"}
    checked = zeros = 0
    for n in fp32.graph.node:
        if n.op_type != "Conv" or n.name not in q_convs:
            continue
        w = numpy_helper.to_array(f_inits[n.input[1]])
        src = q_convs[n.name].input[1]
        if src in producer:  # DequantizeLinear of the int8 weights
            src = producer[src].input[0]
        q = numpy_helper.to_array(q_inits[src])
        if q.shape != w.shape or np.any((w == 0) & (q != 0)):
            raise UserError(f"the INT8 weights of {n.name} are nonzero where the FP32 ones are 0; this is a bug, "
                            "please report it")
        checked += 1
        zeros += int((w == 0).sum())
    return {"convs_checked": checked, "zero_taps": zeros, "all_still_zero": True}


def bsn_subgraph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The first BSN pass of a purifier graph, as its own graph: its input (what GS hands it) → its output (head
    correction + blind baseline, before any clip), with the same nodes and initializers."""
    g = model.graph
    producer, readers = graph_index(g)
    first = next((n for n in g.node if n.op_type == "Conv" and n.name.startswith(_MASKED_PREFIXES[0])), None)
    head = next((n for n in g.node if n.op_type == "Conv" and n.name.startswith(_HEAD_PREFIX)
                 and not n.name.startswith(_HEAD_RES_PREFIX)), None)
    if first is None or head is None:
        raise ValueError("the graph has no BSN")
    src = first.input[0]
    while src in producer and producer[src].op_type in ("QuantizeLinear", "DequantizeLinear"):
        src = producer[src].input[0]
    out = head.output[0]
    add = [r for r in readers.get(out, []) if r.op_type == "Add"]
    if add:  # blind baseline + correction
        out = add[0].output[0]
    keep, stack = set(), [out]
    while stack:  # every node the output needs, back to the BSN input (nodes known by their first output)
        t = stack.pop()
        n = producer.get(t)
        if t == src or n is None or n.output[0] in keep:
            continue
        keep.add(n.output[0])
        stack.extend(n.input)
    nodes = [n for n in g.node if n.output[0] in keep]
    used = {i for n in nodes for i in n.input}
    dims = ["batch", 3, "height", "width"]
    sub = helper.make_graph(nodes, "ncis_bsn", [helper.make_tensor_value_info(src, TensorProto.FLOAT, dims)],
                            [helper.make_tensor_value_info(out, TensorProto.FLOAT, dims)],
                            initializer=[t for t in g.initializer if t.name in used])
    return helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)


BLIND_SPOT_MAX_SIDE = 64  # the BSN's nodes do not depend on the image size (GS, which does, is not in it)


def blind_spot_report(model: onnx.ModelProto, height: int, width: int, *, seed: int = 0) -> dict:
    """Change one input pixel of the model's (quantized) BSN and check its output at that pixel does not move, at
    the corners, an edge and the centre; raises UserError naming the pixel otherwise (a bug).

    Checked at up to ``BLIND_SPOT_MAX_SIDE`` per side: the BSN subgraph is the same for every size."""
    from ncis_deploy.runners import make_runner

    height, width = min(height, BLIND_SPOT_MAX_SIDE), min(width, BLIND_SPOT_MAX_SIDE)
    with make_runner("onnxruntime", bsn_subgraph(model).SerializeToString(), check_range=False) as r:
        pixels, moved = blind_spot_moves(r.infer, height, width, seed=seed)
    if any(m != 0.0 for m in moved):
        (y, x), m = next(((p, m) for p, m in zip(pixels, moved) if m != 0.0))
        raise UserError(f"the INT8 BSN is not blind: changing input pixel ({y}, {x}) moved its output there by "
                        f"{m:.3g}; this is a bug, please report it")
    return {"checked_at": [height, width], "pixels": [list(p) for p in pixels], "max_abs_change_at_pixel": max(moved),
            "checked_on": "the artifact's own BSN (input: what GS hands it), onnxruntime-cpu"}


def blind_spot_moves(infer, height: int, width: int, *, seed: int = 0) -> tuple[list[tuple[int, int]], list[float]]:
    """(pixels, moves): ``infer`` (a BSN, NCHW → NCHW) on a random image and on copies with one pixel inverted each,
    at the corners, an edge and the centre; a move is how far the output at the changed pixel went (0 = blind)."""
    base = np.random.default_rng(seed).random((1, 3, height, width), dtype=np.float32)
    pixels = sorted({(0, 0), (height - 1, width - 1), (0, width // 2), (height // 2, width // 2),
                     (height // 3, width - 1)})
    batch = np.repeat(base, len(pixels) + 1, axis=0)
    for k, (y, x) in enumerate(pixels, 1):
        batch[k, :, y, x] = 1.0 - batch[k, :, y, x]
    out = infer(batch)
    return pixels, [float(np.abs(out[k, :, y, x] - out[0, :, y, x]).max()) for k, (y, x) in enumerate(pixels, 1)]


def holdout_cases(height: int, width: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """The hold-out photos (never calibrated on) as :func:`photo_views` at the export size, clean and noisy."""
    import torch

    from ncis_deploy.data import bundled_photos
    from ncis_deploy.quality import HOLDOUT_NOISE, add_noise

    names = [n for n, _ in bundled_photos("holdout")]
    x = photo_views([a for _, a in bundled_photos("holdout")], height, width, seed=seed)
    noisy = add_noise(torch.from_numpy(x), HOLDOUT_NOISE, seed).numpy()
    shape = "x".join(map(str, x.shape))
    return [(f"hold-out {'+'.join(names)} {shape}", x), (f"hold-out {'+'.join(names)} + 8/255 noise {shape}", noisy)]


def _psnr(a: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def quality_report(fp32: bytes, int8: bytes, cases, *, classifier: bytes | None = None, mean=None,
                   std=None) -> dict:
    """INT8 vs the FP32 artifact on ``cases`` (ONNX Runtime CPU, :func:`ncis_deploy.runners.compare.compare`): max
    and mean |error| and PSNR, and with a classifier the top-1 agreement of its predictions on the two outputs."""
    from ncis_deploy.runners import make_runner
    from ncis_deploy.runners.compare import compare

    result = compare({"fp32": make_runner("onnxruntime", fp32), "int8": make_runner("onnxruntime", int8)}, cases)
    pair = result.pairs[0]
    ref, got = result.outputs["fp32"], result.outputs["int8"]
    rows = [r | {"psnr_db": round(_psnr(b, a), 2)} for r, a, b in zip(pair.rows(), ref, got)]
    psnr = float(_psnr(np.concatenate([b.ravel() for b in got]), np.concatenate([a.ravel() for a in ref])))
    report = {"backend": "onnxruntime-cpu", "reference": "fp32 ONNX on onnxruntime-cpu", "tolerance": None,
              "max_abs": pair.max_abs, "mean_abs": float(np.mean([c.mean_abs for c in pair.cases])),
              "psnr_db": round(psnr, 2), "psnr_target_db": PSNR_TARGET_DB,
              "meets_psnr_target": bool(psnr >= PSNR_TARGET_DB),
              "cases": rows}
    if classifier is not None:
        m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
        s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
        with make_runner("onnxruntime", classifier, check_range=False) as clf:
            logits = {k: [clf.infer(((y - m) / s).astype(np.float32)) for y in v] for k, v in result.outputs.items()}
        top = compare({"classifier(fp32)": logits["fp32"], "classifier(int8)": logits["int8"]}, cases, top1=True)
        report["classifier_top1_agreement"] = {"agreement": top.pairs[0].top1_agreement,
                                               "images": top.pairs[0].images}
    return report
