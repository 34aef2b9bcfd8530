"""Static TensorRT ONNX-parser gate: reject, before any GPU is involved, graphs that TensorRT 10/11 cannot parse.

Why a static gate: an engine build happens on another machine, minutes later, and TensorRT's parser reports a
failure as a C++ error code. Checking the graph here names the offending node while the export is still running,
and it runs in CI without TensorRT or a GPU.

The rules come from onnx-tensorrt (the parser TensorRT ships): ``docs/operators.md`` (the support matrix, 10.x),
``onnxOpCheckers.cpp`` (the parser's own static checks) and ``onnxOpImporters.cpp`` (what each importer demands of
its inputs). They are deliberately *conservative*: where one 10.x release accepts something an older one rejects,
the gate takes the older answer, so a graph that passes here parses on every TensorRT 10.x and 11.x. The table is
not the full operator list: it holds the ops a purification graph (and a classifier behind it) plausibly uses; an
op outside it is reported with the table's name, so adding a row is the fix when operators.md supports the op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import onnx
from onnx import TensorProto

from ncis_deploy.errors import UserError

# TensorRT 10.0's parser supports opsets 9..20 (operators.md, 10.0: "inclusive range of opset 9 to opset 20");
# later 10.x accept more (10.15: 9..24). 20 is the newest opset every 10.x/11.x parser accepts.
OPSET_RANGE: tuple[int, int] = (9, 20)

DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
PLUGIN_DOMAIN = "trt.plugins"  # the domain ONNX Runtime's TensorRT EP routes to TensorRT plugins

# Element types TensorRT handles natively (operators.md 10.x lists DOUBLE only as "limited support": the parser
# casts it down to float32 and clamps, which silently changes numerics, so the gate rejects it like complex/string).
SUPPORTED_DTYPES: frozenset[int] = frozenset({
    TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT8, TensorProto.INT32,
    TensorProto.INT64, TensorProto.BOOL, TensorProto.UINT8,
})

CONTROL_FLOW = frozenset({"Loop", "If", "Scan"})


class TensorRTGateError(UserError):
    """The ONNX graph would not parse (or not parse faithfully) in TensorRT; the message names the first node."""


@dataclass(frozen=True)
class OpRule:
    """What TensorRT's parser demands of an op beyond supporting it.

    ``const_inputs``: input index -> role; the input (when present) must be a build-time constant, i.e. an
    initializer or a Constant node's output (the parser's ``is_weights()``), not a tensor computed at runtime.
    ``allowed``: attribute -> (ONNX default, accepted values). ``all_ones``: attributes that must be all 1 if set.
    ``max_outputs``: outputs beyond this many must be unused (empty names). ``forbidden``: attributes not accepted.
    """

    const_inputs: Mapping[int, str] = field(default_factory=dict)
    allowed: Mapping[str, tuple[object, frozenset]] = field(default_factory=dict)
    all_ones: tuple[str, ...] = ()
    max_outputs: int | None = None
    forbidden: tuple[str, ...] = ()


_PLAIN = OpRule()

# Supported by the TensorRT 10 parser with no extra demand the gate can check statically (operators.md 10.x).
# Notes on inputs that could look constant-only but are not: Clip min/max may be runtime tensors (the importer falls
# back to elementwise max/min); Slice starts/ends/axes/steps may be runtime tensors in 10.x (8.x wanted axes as an
# initializer); Reshape/Expand/Tile shapes and Resize scales/sizes are shape tensors and may be computed.
_PLAIN_OPS = """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Cast CastLike Ceil Celu Clip Concat ConstantOfShape
    Cos Cosh DepthToSpace DequantizeLinear Div Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
    GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
    GroupNormalization HardSigmoid HardSwish Hardmax Identity InstanceNormalization IsInf IsNaN LeakyRelu Less
    LessOrEqual Log LogSoftmax LRN MatMul Max Mean MeanVarianceNormalization Min Mish Mod Mul Neg Not Or PRelu Pow
    QuantizeLinear Range Reciprocal Relu Reshape Round ScatterElements Selu Shape Shrink Sigmoid Sign Sin Sinh Size
    Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Sub Sum Tan Tanh ThresholdedRelu Tile Transpose Trilu
    Where Xor
""".split()

_POOL = OpRule(all_ones=("dilations",))  # onnxOpCheckers.cpp poolingCheckHelper: dilations other than 1 rejected
_REDUCE = OpRule(const_inputs={1: "axes"})  # operators.md 10.x + reduceTensor(): "Axis input must be an initializer!"
_CONV_PADS = frozenset({"NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"})  # importerUtils getKernelParams

SUPPORTED_OPS: dict[str, OpRule] = {op: _PLAIN for op in _PLAIN_OPS} | {
    # Pad: modes constant/reflect/edge/wrap map to ISliceLayer FILL/REFLECT/CLAMP/WRAP; anything else is
    # "Unsupported pad mode". Recent 10.x importers also take a runtime `pads` tensor, but older parsers and the
    # 8.x/10.0 notes want an initializer, and for the purifier a runtime pad is always an export bug: required constant.
    "Pad": OpRule(const_inputs={1: "pads"},
                  allowed={"mode": ("constant", frozenset({"constant", "reflect", "edge", "wrap"}))}),
    "Conv": OpRule(allowed={"auto_pad": ("NOTSET", _CONV_PADS)}),
    "ConvTranspose": OpRule(allowed={"auto_pad": ("NOTSET", _CONV_PADS)}),
    "MaxPool": OpRule(all_ones=("dilations",), max_outputs=1),  # the Indices output is unsupported
    "AveragePool": _POOL,
    "LpPool": OpRule(all_ones=("dilations",), allowed={"p": (2, frozenset({1, 2}))}),
    "LpNormalization": OpRule(allowed={"p": (2, frozenset({1, 2}))}),
    "BatchNormalization": OpRule(allowed={"training_mode": (0, frozenset({0}))}, max_outputs=1),
    "LayerNormalization": OpRule(max_outputs=1),  # Mean/InvStdDev outputs are training artifacts
    "Dropout": OpRule(const_inputs={2: "training_mode"}),  # operators.md: is_training must be an initializer
    "Constant": OpRule(forbidden=("sparse_value", "value_string", "value_strings")),
    "CumSum": OpRule(const_inputs={1: "axis"}),  # operators.md: build-time constant
    "OneHot": OpRule(const_inputs={1: "depth"}),  # operators.md: build-time constant
    # operators.md 10.x: "axes must be resolvable to a constant" (10.7 added some dynamic-axes support; not relied on)
    "Squeeze": OpRule(const_inputs={1: "axes"}),
    "Unsqueeze": OpRule(const_inputs={1: "axes"}),
    "TopK": OpRule(allowed={"sorted": (1, frozenset({1}))}),
    "ScatterND": OpRule(allowed={"reduction": ("none", frozenset({"none"}))}),
    # operators.md lists nearest/linear (the importer also knows cubic; not relied on), five coordinate modes,
    # the four nearest modes, no antialiasing and only the `stretch` aspect-ratio policy.
    "Resize": OpRule(allowed={
        "mode": ("nearest", frozenset({"nearest", "linear"})),
        "coordinate_transformation_mode": ("half_pixel", frozenset(
            {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"})),
        "nearest_mode": ("round_prefer_floor", frozenset({"round_prefer_floor", "round_prefer_ceil", "floor", "ceil"})),
        "antialias": (0, frozenset({0})),
        "keep_aspect_ratio_policy": ("stretch", frozenset({"stretch"})),
    }),
    "LSTM": OpRule(allowed={"input_forget": (0, frozenset({0})), "layout": (0, frozenset({0}))}),
} | {op: _REDUCE for op in ("ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin "
                            "ReduceProd ReduceSum ReduceSumSquare").split()}


def _dtype_name(dt: int) -> str:
    name = TensorProto.DataType.Name(dt).lower() if dt in TensorProto.DataType.values() else f"type {dt}"
    return {"double": "float64", "float": "float32"}.get(name, name)


def _label(node: onnx.NodeProto, index: int) -> str:
    return f"node '{node.name}' ({node.op_type})" if node.name else f"node #{index} ({node.op_type}, unnamed)"


def _attr(node: onnx.NodeProto, name: str):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


def _opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            return imp.version
    return None


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor we can learn about: declared, initializers, Constant/Cast, then shape inference."""
    g = model.graph
    types: dict[str, int] = {}
    try:  # non-strict inference: custom-domain outputs simply stay unknown
        inferred = onnx.shape_inference.infer_shapes(model).graph
        value_infos = list(inferred.value_info)
    except Exception:  # noqa: BLE001  (a graph inference cannot handle still gets the other checks)
        value_infos = list(g.value_info)
    for vi in [*g.input, *g.output, *value_infos]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    for s in g.sparse_initializer:
        types[s.values.name] = s.values.data_type
    for n in g.node:
        if n.op_type == "Constant" and n.output and (v := _attr(n, "value")) is not None:
            types.setdefault(n.output[0], v.data_type)
        elif n.op_type == "Cast" and n.output and (to := _attr(n, "to")) is not None:
            types.setdefault(n.output[0], to)
    return types


def _check_rule(node: onnx.NodeProto, label: str, rule: OpRule, opset: int, constants: set[str]) -> Iterable[str]:
    for name in rule.forbidden:
        if _attr(node, name) is not None:
            yield f"{label}: attribute '{name}' is not supported by TensorRT's parser; store the value as a tensor"
    for name, (default, accepted) in rule.allowed.items():
        value = _attr(node, name)
        value = default if value is None else (value.decode() if isinstance(value, bytes) else value)
        if value not in accepted:
            shown = ", ".join(sorted(map(str, accepted)))
            yield (f"{label}: {name}={value!r} is not supported by TensorRT's parser (supported: {shown}); "
                   "re-export with one of those")
    for name in rule.all_ones:
        value = _attr(node, name)
        if value is not None and any(v != 1 for v in value):
            yield f"{label}: {name}={list(value)} is not supported by TensorRT (must be all 1); rewrite without {name}"
    if rule.max_outputs is not None and any(o for o in node.output[rule.max_outputs:]):
        yield (f"{label}: only the first {rule.max_outputs} output(s) are supported by TensorRT; "
               "export without the extra outputs")
    for index, role in rule.const_inputs.items():
        if index < len(node.input) and node.input[index] and node.input[index] not in constants:
            yield (f"{label}: input {index} ('{role}' = tensor '{node.input[index]}') is computed at runtime, but "
                   "TensorRT's ONNX parser needs it as a build-time constant (an initializer or Constant node); "
                   "constant-fold the graph (e.g. polygraphy surgeon sanitize --fold-constants) "
                   "or export it as an initializer")
    for problem in _EXTRA.get(node.op_type, lambda *a: ())(node, label, opset):
        yield problem


def _pad_extra(node: onnx.NodeProto, label: str, opset: int) -> Iterable[str]:
    if (_attr(node, "mode") or b"constant") == b"wrap" and opset < 19:
        yield f"{label}: Pad mode 'wrap' exists only from ONNX opset 19 (model opset {opset}); re-export at opset >= 19"


def _conv_extra(node: onnx.NodeProto, label: str, opset: int) -> Iterable[str]:
    auto_pad = (_attr(node, "auto_pad") or b"NOTSET").decode()
    if auto_pad.startswith("SAME") and _attr(node, "pads") is not None:
        yield f"{label}: auto_pad={auto_pad} together with explicit pads is rejected by TensorRT's parser; keep one of them"
    kernel = _attr(node, "kernel_shape")
    if kernel is not None and not 1 <= len(kernel) <= 3:
        yield f"{label}: {len(kernel)}-D convolution is not supported by TensorRT (1-D, 2-D and 3-D only)"


_EXTRA: dict[str, Callable[[onnx.NodeProto, str, int], Iterable[str]]] = {
    "Pad": _pad_extra, "Conv": _conv_extra, "ConvTranspose": _conv_extra,
}


def _check_op(node: onnx.NodeProto, label: str, opset: int, constants: set[str], plugins: frozenset[str] | set[str],
              functions: dict[tuple[str, str], onnx.FunctionProto]) -> list[str]:
    if (node.domain, node.op_type) in functions:  # model-local function: the parser inlines it, so check its body
        body = functions[(node.domain, node.op_type)]
        # constness of the function's formal inputs depends on the call site; they are given the benefit of the doubt
        consts = {o for n in body.node if n.op_type == "Constant" for o in n.output}
        return [p for i, n in enumerate(body.node)
                for p in _check_op(n, f"{label} -> {_label(n, i)}", opset, consts | set(body.input), plugins, functions)]
    if node.domain not in DEFAULT_DOMAINS:
        where = f"custom op '{node.domain}::{node.op_type}'"
        if node.op_type not in plugins:
            return [f"{label}: {where} is not a declared TensorRT plugin; TensorRT's parser can only map a custom op "
                    "to a registered plugin: register one and pass its name in plugins=, or use standard ONNX ops"]
        if _attr(node, "plugin_version") is None and node.domain != PLUGIN_DOMAIN:
            return [f"{label}: plugin {where} has no 'plugin_version' attribute and is not in domain "
                    f"'{PLUGIN_DOMAIN}'; add plugin_version (and plugin_namespace) or move it to '{PLUGIN_DOMAIN}'"]
        return []
    if node.op_type in CONTROL_FLOW:
        return [f"{label}: control flow ({node.op_type}) is not allowed in a deployable graph (TensorRT runs it as a "
                "slow loop/conditional and ONNX Runtime CUDA graphs reject it); unroll the iterations at export time"]
    rule = SUPPORTED_OPS.get(node.op_type)
    if rule is None:
        return [f"{label}: op '{node.op_type}' is not in the TensorRT 10 parser table (ncis_deploy.exporters.gate."
                "SUPPORTED_OPS, from onnx-tensorrt docs/operators.md); express it with supported ops, or add a row "
                "if operators.md lists it"]
    return list(_check_rule(node, label, rule, opset, constants))


def gate_problems(model: onnx.ModelProto, plugins: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Every reason TensorRT's ONNX parser would reject ``model`` (empty when it passes), in graph order.

    ``plugins``: op types of custom-domain nodes that a registered TensorRT plugin implements.
    """
    problems: list[str] = []
    lo, hi = OPSET_RANGE
    opset = _opset(model)
    if opset is None:
        problems.append("the model imports no default-domain ('' / ai.onnx) opset; re-export it with opset 18")
        opset = hi
    elif not lo <= opset <= hi:
        problems.append(f"model opset {opset} is outside {lo}..{hi}, the range every TensorRT 10.x/11.x ONNX "
                        f"parser accepts; re-export with opset 18")
    g = model.graph
    constants = {t.name for t in g.initializer} | {s.values.name for s in g.sparse_initializer}
    constants |= {n.output[0] for n in g.node if n.op_type == "Constant" and n.output}
    types = _elem_types(model)
    functions = {(f.domain, f.name): f for f in model.functions}
    reported: set[str] = set()
    for i, node in enumerate(g.node):
        label = _label(node, i)
        problems += _check_op(node, label, opset, constants, plugins, functions)
        for name in [*node.input, *node.output]:  # each bad tensor once, at its producer or first consumer
            dt = types.get(name)
            if name and dt is not None and dt not in SUPPORTED_DTYPES and name not in reported:
                reported.add(name)
                problems.append(
                    f"{label}: tensor '{name}' is {_dtype_name(dt)}, which TensorRT does not support (supported: "
                    f"{', '.join(_dtype_name(t) for t in sorted(SUPPORTED_DTYPES))}); "
                    "keep the graph in float32/float16 (cast in PyTorch before export)")
    return problems


def check_tensorrt_compatible(model: onnx.ModelProto, plugins: frozenset[str] | set[str] = frozenset()) -> None:
    """Raise :class:`TensorRTGateError` naming the first problem (and how many more) when ``model`` fails the gate."""
    problems = gate_problems(model, plugins)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise TensorRTGateError(f"the ONNX graph is not TensorRT-compatible: {problems[0]}{more}")


def graph_index(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    """(tensor name → the node producing it, tensor name → the nodes reading it, in graph order): the one index the
    graph rewrites (Q/DQ export, ORT's CPU Q/DQ form) walk."""
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return producer, readers
