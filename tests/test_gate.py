"""The static TensorRT gate: a purifier-like graph passes; each kind of unparseable node is named in the error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ncis_deploy.errors import UserError
from ncis_deploy.exporters.gate import (OPSET_RANGE, SUPPORTED_OPS, TensorRTGateError, check_tensorrt_compatible,
                                        gate_problems)


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(nodes, inits, *, out="y", out_type=TensorProto.FLOAT, opset=18, extra_opsets=(), functions=()):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(out, out_type, ["n", "c", "h", "w"])], initializer=inits)
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in extra_opsets)]
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


def _valid_nodes():
    """Pad(reflect) -> Conv(dilated) -> PRelu -> MatMul -> Add -> Clip: the purifier's op mix, fixed 8x8."""
    rng = np.random.default_rng(0)
    inits = [
        _init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
        _init("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        _init("b", np.zeros(4, np.float32)),
        _init("slope", np.full((4, 1, 1), 0.25, np.float32)),
        _init("m", rng.standard_normal((6, 6)).astype(np.float32)),
        _init("bias", np.ones((1, 4, 6, 6), np.float32)),
        _init("lo", np.array(0.0, np.float32)),
        _init("hi", np.array(1.0, np.float32)),
    ]
    nodes = [
        helper.make_node("Pad", ["input", "pads"], ["padded"], name="pad", mode="reflect"),
        helper.make_node("Conv", ["padded", "w", "b"], ["conv"], name="conv", dilations=[2, 2], pads=[0, 0, 0, 0]),
        helper.make_node("PRelu", ["conv", "slope"], ["act"], name="prelu"),
        helper.make_node("MatMul", ["act", "m"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "bias"], ["sum"], name="add"),
        helper.make_node("Clip", ["sum", "lo", "hi"], ["y"], name="clip"),
    ]
    return nodes, inits


def _gate_error(model, **kw) -> str:
    with pytest.raises(TensorRTGateError) as exc:
        check_tensorrt_compatible(model, **kw)
    assert isinstance(exc.value, UserError)
    msg = str(exc.value)
    assert "\n" not in msg  # the CLI prints UserErrors on one line
    return msg


def test_valid_purifier_like_graph_passes():
    nodes, inits = _valid_nodes()
    model = _model(nodes, inits)
    onnx.checker.check_model(model, full_check=True)  # the fixture itself is a valid, fully typed ONNX model
    assert gate_problems(model) == []
    check_tensorrt_compatible(model)


def test_runs_under_onnxruntime_so_the_fixture_is_real():
    ort = pytest.importorskip("onnxruntime")
    nodes, inits = _valid_nodes()
    sess = ort.InferenceSession(_model(nodes, inits).SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)})[0]
    assert y.shape == (1, 4, 6, 6) and y.min() >= 0 and y.max() <= 1


def test_loop_is_rejected_with_unroll_advice():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["x_in"], ["x_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Loop", ["trip", "", "input"], ["y"], name="gs_iterations", body=body)]
    msg = _gate_error(_model(nodes, [_init("trip", np.array(3, np.int64))]))
    assert "node 'gs_iterations' (Loop)" in msg and "unroll" in msg


def test_unknown_op_is_named():
    nodes = [helper.make_node("Relu", ["input"], ["r"], name="ok"),
             helper.make_node("FancyBlur", ["r"], ["y"], name="blur7")]
    msg = _gate_error(_model(nodes, []))
    assert "node 'blur7' (FancyBlur)" in msg and "not in the TensorRT 10 parser table" in msg
    assert "ok" not in msg.split("node 'blur7'")[0]  # the first offending node, not the first node


def test_custom_domain_op_needs_a_declared_plugin():
    def model(domain, **attrs):
        nodes = [helper.make_node("BlindSpotConv", ["input"], ["y"], name="bsn_plugin", domain=domain, **attrs)]
        return _model(nodes, [], extra_opsets=[domain])

    msg = _gate_error(model("com.example"))
    assert "node 'bsn_plugin' (BlindSpotConv)" in msg and "not a declared TensorRT plugin" in msg
    # declared, but neither versioned nor in the TensorRT plugin domain
    msg = _gate_error(model("com.example"), plugins={"BlindSpotConv"})
    assert "plugin_version" in msg and "trt.plugins" in msg
    assert gate_problems(model("com.example", plugin_version="1"), plugins={"BlindSpotConv"}) == []
    assert gate_problems(model("trt.plugins"), plugins={"BlindSpotConv"}) == []
    assert gate_problems(model("trt.plugins"))  # the domain alone does not declare a plugin


def test_pad_with_runtime_pads_is_rejected():
    nodes = [
        helper.make_node("Concat", ["pads_lo", "pads_hi"], ["pads"], name="make_pads", axis=0),
        helper.make_node("Pad", ["input", "pads"], ["y"], name="gs_pad", mode="reflect"),
    ]
    inits = [_init("pads_lo", np.array([0, 0, 1, 1], np.int64)), _init("pads_hi", np.array([0, 0, 1, 1], np.int64))]
    model = _model(nodes, inits)
    onnx.checker.check_model(model, full_check=True)
    msg = _gate_error(model)
    assert "node 'gs_pad' (Pad)" in msg and "'pads' = tensor 'pads'" in msg and "computed at runtime" in msg
    assert "initializer" in msg
    # the same pads as a Constant node are a build-time constant
    const = helper.make_node("Constant", [], ["pads"], name="pads_const",
                             value=numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)))
    assert gate_problems(_model([const, nodes[1]], [])) == []


def test_float64_tensor_is_rejected_at_its_producer():
    nodes = [
        helper.make_node("Cast", ["input"], ["x64"], name="to_double", to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["x64"], ["y"], name="to_float", to=TensorProto.FLOAT),
    ]
    model = _model(nodes, [])
    onnx.checker.check_model(model, full_check=True)
    problems = gate_problems(model)
    assert len(problems) == 1  # reported once, at the producer, not again at the consumer
    msg = _gate_error(model)
    assert "node 'to_double' (Cast)" in msg and "tensor 'x64' is float64" in msg


def test_float64_initializer_is_named_at_its_consumer():
    nodes = [helper.make_node("Cast", ["input"], ["x64"], name="up", to=TensorProto.DOUBLE),
             helper.make_node("Mul", ["x64", "gain"], ["y"], name="scale")]
    problems = gate_problems(_model(nodes, [_init("gain", np.array(2.0, np.float64))], out_type=TensorProto.DOUBLE))
    assert any(p.startswith("node 'scale' (Mul): tensor 'gain' is float64") for p in problems)


def test_unsupported_pad_mode_is_rejected():
    nodes, inits = _valid_nodes()
    bad = helper.make_node("Pad", ["input", "pads"], ["padded"], name="pad", mode="symmetric")
    msg = _gate_error(_model([bad, *nodes[1:]], inits))
    assert "node 'pad' (Pad)" in msg and "mode='symmetric'" in msg and "reflect" in msg


def test_wrap_pad_needs_opset_19():
    pad = helper.make_node("Pad", ["input", "pads"], ["y"], name="wrap_pad", mode="wrap")
    inits = [_init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))]
    assert "opset 19" in _gate_error(_model([pad], inits, opset=18))
    assert gate_problems(_model([pad], inits, opset=19)) == []


def test_opset_outside_range_and_problem_count():
    nodes, inits = _valid_nodes()
    lo, hi = OPSET_RANGE
    msg = _gate_error(_model(nodes, inits, opset=hi + 1))
    assert f"model opset {hi + 1}" in msg
    two = _model([helper.make_node("FancyBlur", ["input"], ["y"], name="a")], [], opset=hi + 1)
    assert len(gate_problems(two)) == 2 and "(and 1 more problem(s))" in _gate_error(two)


def test_attribute_rules_from_the_table():
    reduce_axes = helper.make_node("Shape", ["input"], ["axes"], name="dyn_axes", start=2, end=3)
    reduce = helper.make_node("ReduceMean", ["input", "axes"], ["y"], name="mean")
    assert "node 'mean' (ReduceMean): input 1 ('axes'" in _gate_error(_model([reduce_axes, reduce], []))
    pool = helper.make_node("MaxPool", ["input"], ["y"], name="pool", kernel_shape=[3, 3], dilations=[2, 2])
    assert "dilations=[2, 2]" in _gate_error(_model([pool], []))
    conv = helper.make_node("Conv", ["input", "w"], ["y"], name="same", auto_pad="SAME_UPPER", pads=[1, 1, 1, 1])
    assert "auto_pad=SAME_UPPER together with explicit pads" in _gate_error(
        _model([conv], [_init("w", np.zeros((4, 3, 3, 3), np.float32))]))
    assert "Conv" in SUPPORTED_OPS and "Loop" not in SUPPORTED_OPS
