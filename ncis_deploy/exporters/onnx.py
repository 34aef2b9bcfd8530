"""Build the purifier's ONNX graph directly from its config and weights.

Why not ``torch.onnx.export``: the graph we want is not the PyTorch forward. It is
- **one graph**, every GS and BSN iteration unrolled (no Loop: TensorRT and ORT CUDA graphs dislike control flow);
- **GS fused exactly**: at a fixed size, consecutive GS stages are one constant H×H and one W×W matrix, i.e. one
  MatMul per axis; with dynamic H/W the same matrices are built inside the graph from the runtime size (reflection
  index → one-hot rows → the one-iteration matrix → its T-th power by repeated squaring), still exact;
- **BSN masks folded and dead taps removed**: a masked conv computes only its live taps. Layers 3..L (centre +
  4 corners of a dilation-3 3×3) become a 1×1 conv plus a 2×2 conv with dilation 6; layer 2 (centre + 8 knight
  moves of a 5×5) becomes a 1×1 conv plus two 2×2 convs with dilations (2, 4) and (4, 2) — 9 taps instead of 25.
  Layer 1 keeps its dense 3×3 (8 of 9 taps live, on 3 input channels): splitting it would save 3·F MACs per pixel
  but add an F-channel Add, which costs more memory traffic than it saves.

``smoothing="plugin"`` replaces the GS matrices by one TensorRT plugin node per GS stage
(``trt.plugins::NcisGaussianSmooth``, see :mod:`ncis_deploy.exporters.plugin_ref`): the one-launch CUDA kernel instead
of two MatMuls, for any H and W. Such a graph runs on TensorRT with the plugin library, and on the CPU only through
``plugin_ref.reference_evaluator``.

``dense_bsn=True`` exports the masked convolutions as plain dense convs instead; it exists to measure the saving
and to check that both forms compute the same function.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ncis_deploy.errors import UserError
from ncis_deploy.exporters import plugin_ref
from ncis_deploy.exporters.gate import PLUGIN_DOMAIN
from ncis_deploy.exporters.manifest import BF16_NODES_KEY, META_PREFIX
from ncis_deploy.model.bsn import BILATERAL_H, BILATERAL_RADIUS, FBINet, MaskedConv2d, Residual, bilateral_taps
from ncis_deploy.model.purifier import Purifier
from ncis_deploy.model.smoothing import fused_matrix, gaussian_kernel1d

INPUT, OUTPUT = "input", "output"
SMOOTHING_FORMS = ("matmul", "plugin")


def weights_sha256(purifier: Purifier) -> str | None:
    """Hash of the BSN tensors (sorted names, dtype, shape, bytes): independent of the file they came from."""
    if purifier.bsn is None:
        return None
    h = hashlib.sha256()
    for k, v in sorted(purifier.bsn.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class _Graph:
    """A small builder: unique names, initializers in the right dtype, one list of nodes."""

    def __init__(self, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}
        self.bsn_nodes: list[str] = []  # each BSN pass's nodes, first masked conv to head conv (BF16_NODES_KEY)

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def init(self, hint: str, arr, dtype=None) -> str:
        arr = np.asarray(arr, dtype=dtype or self.dtype)
        n = self.name(hint)
        self.inits.append(numpy_helper.from_array(arr, n))
        return n

    def const(self, value, dtype) -> str:
        """A shared scalar/vector initializer (int64 indices, float factors)."""
        key = (np.dtype(dtype).str, np.asarray(value).tobytes(), np.asarray(value).shape)
        if key not in self._consts:
            self._consts[key] = self.init("c", value, dtype)
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def split(self, x: str, sizes: list[int], hint: str) -> list[str]:
        """Split along axis 1 (sizes as an input: the form every opset from 13 reads)."""
        name = self.name(hint)
        outs = [f"{name}_{i}" for i in range(len(sizes))]
        self.nodes.append(helper.make_node("Split", [x, self.const(sizes, np.int64)], outs, name=name, axis=1))
        return outs


# ----------------------------------------------------------------------------------------------------------- GS
def _merge_gs(stages: list[dict]) -> list[tuple[str, object]]:
    """Group the plan into runs of consecutive GS stages (fused into one map per axis) and BSN passes."""
    groups: list[tuple[str, object]] = []
    for st in stages:
        if st["type"] == "gs":
            if st["iterations"] == 0:
                continue
            if groups and groups[-1][0] == "gs":
                groups[-1][1].append(st)
            else:
                groups.append(("gs", [st]))
        elif st["iterations"] > 0:
            groups.append(("bsn", st["iterations"]))
    return groups


def _gs_fixed(g: _Graph, x: str, stages: list[dict], h: int, w: int) -> str:
    mh, mw = np.eye(h), np.eye(w)
    for st in stages:  # later stages multiply from the left (rows) and from the right (columns)
        mh = fused_matrix(h, st["kernel_size"], st["sigma"], st["iterations"]) @ mh
        mw = fused_matrix(w, st["kernel_size"], st["sigma"], st["iterations"]) @ mw
    x = g.op("MatMul", [g.init("gs_rows", mh), x], "gs_h")
    return g.op("MatMul", [x, g.init("gs_cols", mw.T)], "gs_w")


def _gs_axis_matrix(g: _Graph, n: str, st: dict) -> str:
    """In-graph n×n matrix of ``st`` along an axis whose length is the int64 scalar-in-a-[1]-tensor ``n``."""
    k, r = st["kernel_size"], st["kernel_size"] // 2
    i64 = np.int64
    n0 = g.op("Squeeze", [n, g.const([0], i64)], "n")
    idx = g.op("Range", [g.const(-r, i64), g.op("Add", [n0, g.const(r, i64)]), g.const(1, i64)], "pad_idx")
    period = g.op("Mul", [g.op("Sub", [n0, g.const(1, i64)]), g.const(2, i64)], "period")
    m = g.op("Mod", [idx, period], "mod", fmod=0)  # integer Mod takes the divisor's sign: always >= 0 here
    src = g.op("Where", [g.op("GreaterOrEqual", [m, n0]), g.op("Sub", [period, m]), m], "src")
    cols = g.op("Range", [g.const(0, i64), n0, g.const(1, i64)], "cols")
    onehot = g.op("Equal", [g.op("Unsqueeze", [src, g.const([1], i64)]), g.op("Unsqueeze", [cols, g.const([0], i64)])])
    rows = g.op("Cast", [onehot], "onehot", to=TensorProto.FLOAT)  # [n + 2r, n]; float32 even in an fp16 graph
    taps = gaussian_kernel1d(k, st["sigma"])
    a = None
    for d in range(k):  # A[i] = sum_d g[d] * onehot[i + d]
        sl = g.op("Slice", [rows, g.const([d], i64),
                            g.op("Add", [n, g.const([d], i64)]), g.const([0], i64)], "tap")
        term = g.op("Mul", [sl, g.const(taps[d], np.float32)])
        a = term if a is None else g.op("Add", [a, term])
    # A^T by repeated squaring: ceil(log2 T) squarings plus popcount(T) - 1 products
    result, base, t = None, a, st["iterations"]
    while t:
        if t & 1:
            result = base if result is None else g.op("MatMul", [base, result])
        t >>= 1
        if t:
            base = g.op("MatMul", [base, base])
    return result


def _gs_dynamic(g: _Graph, x: str, stages: list[dict]) -> str:
    shape = g.op("Shape", [x])
    h = g.op("Slice", [shape, g.const([2], np.int64), g.const([3], np.int64)], "H")
    w = g.op("Slice", [shape, g.const([3], np.int64), g.const([4], np.int64)], "W")
    mh = mw = None
    for st in stages:
        sh, sw = _gs_axis_matrix(g, h, st), _gs_axis_matrix(g, w, st)
        mh = sh if mh is None else g.op("MatMul", [sh, mh])
        mw = sw if mw is None else g.op("MatMul", [sw, mw])
    if g.dtype != np.float32:  # the matrix power is formed in float32; only its use is in the graph's precision
        mh = g.op("Cast", [mh], "gs_rows", to=helper.np_dtype_to_tensor_dtype(g.dtype))
        mw = g.op("Cast", [mw], "gs_cols", to=helper.np_dtype_to_tensor_dtype(g.dtype))
    x = g.op("MatMul", [mh, x], "gs_h")
    return g.op("MatMul", [x, g.op("Transpose", [mw], perm=[1, 0])], "gs_w")


def _gs_plugin(g: _Graph, x: str, stages: list[dict]) -> str:
    """One plugin node per stage: the plugin takes any H, W (its own reflection), and an fp16 graph feeds it fp16."""
    for st in stages:
        x = g.op(plugin_ref.PLUGIN_NAME, [x], "gs_plugin", domain=PLUGIN_DOMAIN, **plugin_ref.plugin_attributes(st))
    return x


# ---------------------------------------------------------------------------------------------------------- BSN
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _conv(g: _Graph, x: str, w: np.ndarray, b: np.ndarray | None, dil=(1, 1), pads=(0, 0), hint="conv") -> str:
    ins = [x, g.init(f"{hint}_w", w)] + ([g.init(f"{hint}_b", b)] if b is not None else [])
    return g.op("Conv", ins, hint, dilations=list(dil), pads=[pads[0], pads[1], pads[0], pads[1]],
                kernel_shape=list(w.shape[2:]), strides=[1, 1], group=1)


def _sub_kernel(w: np.ndarray, rows, cols) -> np.ndarray:
    return np.ascontiguousarray(w[:, :, rows][:, :, :, cols])


def _masked_conv(g: _Graph, x: str, conv: MaskedConv2d, dense: bool) -> str:
    w, b = _np(conv.masked_weight()), _np(conv.bias)
    if dense or conv.kind == "first":
        d = conv.dilation[0]
        return _conv(g, x, w, b, (d, d), (conv.padding[0], conv.padding[1]), "bsn_conv")
    if conv.kind == "knight":  # 5×5: centre (2, 2); knights at rows 1,3 × cols 0,4 and rows 0,4 × cols 1,3
        y = _conv(g, x, w[:, :, 2:3, 2:3], b, hint="bsn_centre")
        y = g.op("Add", [y, _conv(g, x, _sub_kernel(w, [1, 3], [0, 4]), None, (2, 4), (1, 2), "bsn_knight_a")])
        return g.op("Add", [y, _conv(g, x, _sub_kernel(w, [0, 4], [1, 3]), None, (4, 2), (2, 1), "bsn_knight_b")])
    # corners: 3×3 dilation 3, taps (0,0), (0,2), (2,0), (2,2) → 2×2 dilation 6, pad 3; centre → 1×1
    y = _conv(g, x, w[:, :, 1:2, 1:2], b, hint="bsn_centre")
    return g.op("Add", [y, _conv(g, x, _sub_kernel(w, [0, 2], [0, 2]), None, (6, 6), (3, 3), "bsn_corners")])


def _prelu(g: _Graph, x: str, act: torch.nn.PReLU) -> str:
    # slope [1, C, 1, 1], the input's rank: with [C, 1, 1] OpenVINO's CPU plugin ran the mixing Add + PRelu chains in
    # planar layout and reordered to and from every convolution around them (58 reorders; f32 1.9x, bf16 1.1x slower)
    return g.op("PRelu", [x, g.init("prelu", _np(act.weight).reshape(1, -1, 1, 1))], "prelu")


def _half(g: _Graph, x: str) -> str:
    return g.op("Mul", [x, g.const(0.5, g.dtype)])


def _residual(g: _Graph, x: str, res: Residual, hint: str = "res_conv") -> str:
    y = _conv(g, x, _np(res.conv1.weight), _np(res.conv1.bias), hint=hint)
    y = _conv(g, _prelu(g, y, res.act1), _np(res.conv2.weight), _np(res.conv2.bias), hint=hint)
    return _prelu(g, _half(g, g.op("Add", [x, y])), res.act2)


def _mean4(g: _Graph, x: str, channels: int) -> str:
    """The BSN's blind baseline: reflect-pad 1, then a depthwise 3×3 that averages the 4 neighbours."""
    padded = g.op("Pad", [x, g.const([0, 0, 1, 1, 0, 0, 1, 1], np.int64)], "mean4_pad", mode="reflect")
    k = np.zeros((channels, 1, 3, 3))
    k[:, 0, [0, 1, 1, 2], [1, 0, 2, 1]] = 0.25
    return g.op("Conv", [padded, g.init("mean4_w", k)], "mean4", kernel_shape=[3, 3], group=channels,
                pads=[0, 0, 0, 0], strides=[1, 1], dilations=[1, 1])


# what an out-of-image tap reads instead of the model's zero pad: its squared distance to any guide in [0, 1] is >= 81
# per channel, so its logit is <= -81 / h² = -8100 and its weight exp() is exactly 0 in float32 and float16, and
# 0 · 10 adds nothing: the function of the model's zero pad and -1e4 logit, without gathering an in-image mask
_OUTSIDE = 10.0


def _bilateral(g: _Graph, x: str, channels: int) -> str:
    """The blind bilateral baseline (:func:`ncis_deploy.model.bsn.bilateral`) in 4-D ops only: a one-hot conv
    gathers the T neighbours of each channel's plane into its own [N, T, H, W], and the weights are
    exp(spatial − ‖n − mean4‖² / h²), normalised over T once at the end.

    The same function as the model's, without three of its steps that cost more than they buy on the CPU:
    - the Softmax op: over axis 1 of NCHW it made ORT transpose to the last axis and back (26 ms of a 250 ms profiled
      224² run) and OpenVINO reorder out of its blocked layout (9 ms);
    - the in-image mask (a fourth gather, of a plane of ones): out-of-image taps read :data:`_OUTSIDE` instead;
    - in float32, the softmax's max subtraction: every logit is <= 0 (no overflow), and the guide is the mean of the
      4 nearest taps, so for input in [0, 1] one of them is within ‖n − guide‖² <= 3/4 of it: the largest weight is
      >= exp(-26) and the sum cannot underflow. Float16 underflows below exp(-17), so an fp16 graph keeps the max.
    The last two together: the ``ncis`` purifier at 224², OpenVINO bf16 31.2 → 29.6 ms, ORT FP32 107 → 102 ms,
    measured interleaved, outputs within 5e-7 (docs/export.md). The sum is floored at the smallest normal float, so
    input far outside [0, 1] (where every weight underflows) gives a finite baseline, not 0 / 0."""
    r = BILATERAL_RADIUS
    k, spatial = bilateral_taps(channels)
    t = k.shape[0] // channels
    one_hot = g.init("bilateral_taps_w", _np(k[:t]))  # [T, 1, 2r+1, 2r+1], the same for every channel
    # split the 3-channel input, not the 3·T-channel taps: OpenVINO's CPU plugin splits with a reference kernel
    padded = g.op("Pad", [x, g.const([0, 0, r, r, 0, 0, r, r], np.int64), g.const(_OUTSIDE, g.dtype)],
                  "bilateral_taps_pad", mode="constant")
    taps = [g.op("Conv", [p, one_hot], "bilateral_taps", kernel_shape=[2 * r + 1] * 2, group=1, pads=[0, 0, 0, 0],
                 strides=[1, 1], dilations=[1, 1]) for p in g.split(padded, [1] * channels, "bilateral_planes")]
    guides = g.split(_mean4(g, x, channels), [1] * channels, "bilateral_guide_split")
    d2 = None
    for tc, gc in zip(taps, guides):
        diff = g.op("Sub", [tc, gc])
        sq = g.op("Mul", [diff, diff])
        d2 = sq if d2 is None else g.op("Add", [d2, sq])
    logits = g.op("Mul", [d2, g.const(-1.0 / (channels * BILATERAL_H ** 2), g.dtype)])
    logits = g.op("Add", [logits, g.init("bilateral_spatial", _np(spatial).reshape(1, -1, 1, 1))])
    axis = g.const([1], np.int64)
    if g.dtype != np.float32:
        logits = g.op("Sub", [logits, g.op("ReduceMax", [logits, axis], "bilateral_max", keepdims=1)])
    e = g.op("Exp", [logits], "bilateral_exp")
    outs = [g.op("ReduceSum", [g.op("Mul", [tc, e]), axis], "bilateral_sum", keepdims=1) for tc in taps]
    total = g.op("Max", [g.op("ReduceSum", [e, axis], "bilateral_norm", keepdims=1),
                         g.const(np.finfo(g.dtype).tiny, g.dtype)])
    return g.op("Div", [g.op("Concat", outs, "bilateral_cat", axis=1), total], "bilateral")


_BASELINE_OPS = {"mean4": _mean4, "bilateral": _bilateral}


def _bsn(g: _Graph, x: str, net: FBINet, dense: bool) -> str:
    start = len(g.nodes)
    raw = _prelu(g, _masked_conv(g, x, net.convs[0], dense), net.raw_acts[0])
    out = total = _residual(g, raw, net.residuals[0])
    for i in range(1, net.layers):
        raw = _prelu(g, _masked_conv(g, raw, net.convs[i], dense), net.raw_acts[i])
        out = _residual(g, _prelu(g, _half(g, g.op("Add", [raw, out])), net.mix_acts[i - 1]), net.residuals[i])
        total = g.op("Add", [total, out])
    y = _prelu(g, g.op("Mul", [total, g.const(1.0 / net.layers, g.dtype)]), net.head_act)
    # names that start with "bsn_head" mark the head block, which export --int8 keeps float (exporters/quantize.py)
    y = _residual(g, y, net.head_residual, hint="bsn_head_res")
    y = _conv(g, y, _np(net.head.weight), _np(net.head.bias), hint="bsn_head")
    g.bsn_nodes += [n.name for n in g.nodes[start:]]  # features and the correction: never the image itself
    return y if net.baseline == "none" else g.op("Add", [y, _BASELINE_OPS[net.baseline](g, x, net.channels)])


def _clip(g: _Graph, x: str) -> str:
    return g.op("Clip", [x, g.const(0.0, g.dtype), g.const(1.0, g.dtype)], "clip")


# ------------------------------------------------------------------------------------------------------- public
def build_onnx(purifier: Purifier, height: int | None = 224, width: int | None = 224, *, dynamic_hw: bool = False,
               opset: int = 18, fp16: bool = False, dense_bsn: bool = False, version: str = "",
               smoothing: str = "matmul") -> onnx.ModelProto:
    """The purifier as one ONNX graph: ``input`` float32 [batch, 3, H, W] in [0, 1] → ``output``, same shape.

    ``fp16``: every weight and activation is float16 (the graph is FP16-*typed*, which is how TensorRT 11 takes
    precision); input and output stay float32, with a Cast at each end, so callers do not change.
    ``smoothing``: "matmul" (exact GS matrices, standard ops) or "plugin" (one NcisGaussianSmooth node per GS stage).
    """
    if smoothing not in SMOOTHING_FORMS:
        raise UserError(f"--smoothing must be one of {', '.join(SMOOTHING_FORMS)}, got {smoothing!r}")
    if opset < 18:
        raise UserError(f"--opset {opset} is too old: the export needs opset >= 18 (Pad/Clip/Slice inputs as tensors)")
    if not dynamic_hw and (height is None or width is None or height < 2 or width < 2):
        raise UserError(f"--height and --width must be >= 2 for a fixed-size export, got {height}x{width}")
    g = _Graph(np.float16 if fp16 else np.float32)
    x = g.op("Cast", [INPUT], "to_fp16", to=TensorProto.FLOAT16) if fp16 else INPUT
    clamp = purifier.config["clamp"]
    for kind, arg in _merge_gs(purifier.config["stages"]):
        if kind == "gs":
            if smoothing == "plugin":
                x = _gs_plugin(g, x, arg)
            else:
                x = _gs_dynamic(g, x, arg) if dynamic_hw else _gs_fixed(g, x, arg, height, width)
        else:
            for _ in range(arg):
                x = _bsn(g, x, purifier.bsn, dense_bsn)
                if clamp:
                    x = _clip(g, x)
    if clamp and not (g.nodes and g.nodes[-1].op_type == "Clip"):
        x = _clip(g, x)
    if fp16:
        x = g.op("Cast", [x], "to_fp32", to=TensorProto.FLOAT)
    if x == INPUT:  # the identity purifier still needs one node
        x = g.op("Identity", [x])
    g.nodes[-1].output[0] = OUTPUT
    g.nodes[-1].name = "output"

    dims = ["batch", 3, "height", "width"] if dynamic_hw else ["batch", 3, height, width]
    graph = helper.make_graph(
        g.nodes, "ncis_purifier",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, dims)],
        initializer=g.inits,
    )
    opsets = [helper.make_opsetid("", opset)]
    if any(n.domain == PLUGIN_DOMAIN for n in g.nodes):
        opsets.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="ncis-deploy", producer_version=version or "0")
    model.ir_version = min(model.ir_version, 10)  # what current ONNX Runtime and TensorRT parsers accept
    meta = {"config": json.dumps(purifier.config, sort_keys=True), "weights_sha256": weights_sha256(purifier) or "",
            "version": version, "input_range": "[0, 1]", "layout": "NCHW", "precision": "fp16" if fp16 else "fp32",
            "bsn_form": "dense" if dense_bsn else "live-taps", "gs_form": smoothing}
    if g.bsn_nodes and not fp16:
        meta[BF16_NODES_KEY.removeprefix(META_PREFIX)] = ",".join(g.bsn_nodes)
    helper.set_model_props(model, {META_PREFIX + k: v for k, v in meta.items()})
    return model


def count_macs(model: onnx.ModelProto, input_shape: tuple[int, int, int, int]) -> dict[str, int]:
    """Multiply-accumulates of Conv and MatMul nodes for one concrete input shape, from the graph itself.

    Returns ``{"conv": ..., "matmul": ..., "total": ...}``. Shapes come from ONNX shape inference on a copy whose input
    dims are fixed to ``input_shape``.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inp = m.graph.input[0].type.tensor_type.shape
    for d, v in zip(inp.dim, input_shape):
        d.Clear()
        d.dim_value = int(v)
    m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in
              list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
    shapes.update({t.name: list(t.dims) for t in m.graph.initializer})
    macs = {"conv": 0, "matmul": 0}
    for node in m.graph.node:
        if node.op_type == "Conv":
            w, out = shapes[node.input[1]], shapes.get(node.output[0])
            if not out or 0 in out:
                raise RuntimeError(f"shape inference gave no shape for {node.name}")
            macs["conv"] += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "MatMul":
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            out = shapes.get(node.output[0])
            if not a or not b or not out or 0 in out:
                raise RuntimeError(f"shape inference gave no shape for {node.name}")
            macs["matmul"] += int(np.prod(out)) * int(a[-1])
    macs["total"] = macs["conv"] + macs["matmul"]
    return macs
